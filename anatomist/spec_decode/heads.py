"""Registry of draft-head kinds: name → (head class, config class). `--head` on the CLI and
`TrainConfig.head` are keys of HEADS; saved folders record theirs in config.json ("head")."""

from __future__ import annotations

import os

from torch import nn

from anatomist.errors import AnatomistError
from anatomist.spec_decode import head as _mtp
from anatomist.spec_decode.eagle3 import Eagle3Config, Eagle3Head

__all__ = ["HEADS", "build_head", "load_any_head"]

HEADS: dict[str, tuple[type[nn.Module], type]] = {
    "mtp": (_mtp.MTPHead, _mtp.MTPConfig),   # DeepSeek-V3-style MTP (speculators "mtp" export)
    "eagle3": (Eagle3Head, Eagle3Config),   # EAGLE-3, one layer (speculators "eagle3" export)
}


def build_head(kind: str, trunk: nn.Module, vocab_ids=None, **config):
    if kind not in HEADS:
        raise AnatomistError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
    cls, cfg_cls = HEADS[kind]
    return cls(trunk, cfg_cls(**config), vocab_ids=vocab_ids)


def load_any_head(folder: str | os.PathLike, trunk: nn.Module):
    """Load a head of any registered kind saved by `save_head`."""
    return _mtp.load_head(folder, trunk, kinds=HEADS)
