"""Preference data: every supported format becomes a validated `PreferencePair`.

    from anatomist.data import load_pairs, dataset_hash
    pairs = load_pairs("hh.jsonl.gz", on_bad_row="skip")
"""

from anatomist.data.io import PairSet, dataset_hash, load_pairs, text_hash
from anatomist.data.records import PreferencePair

__all__ = ["PairSet", "PreferencePair", "dataset_hash", "load_pairs", "text_hash"]
