"""The screen: model-free detectors of known post-training risks and pair hygiene (the first page
of an audit). Floor: above sae, below audit; imports the ground floor, models and data only.

    from anatomist.screen import read_with_hygiene, screen_pairs, screen_section
    pairs, hygiene = read_with_hygiene("hh.jsonl.gz")
    result = screen_pairs(pairs.pairs, topics="topic", hygiene=hygiene)
"""

from anatomist.screen.detectors import DETECTORS, Detector, custom_detector, regex_detector
from anatomist.screen.hygiene import Hygiene, read_with_hygiene, write_clean
from anatomist.screen.report import save, screen_section
from anatomist.screen.run import ScreenResult, screen_pairs

__all__ = ["DETECTORS", "Detector", "Hygiene", "ScreenResult", "custom_detector", "read_with_hygiene",
           "regex_detector", "save", "screen_pairs", "screen_section", "write_clean"]
