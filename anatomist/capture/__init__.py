"""Residual-stream capture: hook (stop after layer L), runner, and the on-disk shard store."""

from anatomist.capture.hook import residual_stream
from anatomist.capture.run import CaptureItem, capture, collate, items_from_pairs
from anatomist.capture.store import ActivationStore, ShardWriter

__all__ = ["ActivationStore", "CaptureItem", "ShardWriter", "capture", "collate", "items_from_pairs",
           "residual_stream"]
