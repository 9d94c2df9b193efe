"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one."""

from __future__ import annotations

import glob
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    _remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_parquet(frame, path: str | Path) -> None:
    """`frame.to_parquet(path, index=False)` (a pandas DataFrame), atomically: every table a stage
    hands to the next is read by column, so the index is never written."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, atomically and leaving nothing behind after a kill.

    Not `save_file(tmp)`: safetensors (0.8 here) writes through its own `.tmpXXXXXX` sibling, whose
    name carries no writer, so a kill mid-save leaves a file nobody can safely remove. Serializing to
    bytes first keeps the only temporary file our pid-named one.
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _remove_stale(path: Path) -> None:
    """Delete temporary siblings of `path` whose writer is gone (killed between write and rename);
    a live writer's file (another process saving the same path) is left alone."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
        pid = old.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            old.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
