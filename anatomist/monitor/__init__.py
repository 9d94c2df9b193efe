"""Concept trajectories during training: `ConceptMonitor` (sample on fixed held-out prompts every N
steps, score the audit's concepts and the screen's detectors, shift from step 0 with CIs, alarms),
its transformers/TRL `ConceptMonitorCallback`, and the run's monitor.jsonl / monitor.html."""

from anatomist.monitor.alarms import Alarm, parse_alarm
from anatomist.monitor.core import ConceptMonitor, log_values

__all__ = ["Alarm", "ConceptMonitor", "ConceptMonitorCallback", "log_values", "parse_alarm"]


def __getattr__(name):  # the callback imports transformers' Trainer: only when asked for
    if name == "ConceptMonitorCallback":
        from anatomist.monitor.callback import ConceptMonitorCallback

        return ConceptMonitorCallback
    raise AttributeError(name)
