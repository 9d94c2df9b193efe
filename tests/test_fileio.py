"""anatomist.fileio.atomic_write_parquet: the table round-trips, and a failed write leaves the old
file and no temporary one behind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from anatomist.fileio import atomic_write_parquet


def test_parquet_round_trip_without_index(tmp_path):
    frame = pd.DataFrame({"pair_id": ["a", "b", "c"], "delta": [0.5, -1.25, 2.0], "n": [3, 1, 4]}, index=[7, 8, 9])
    atomic_write_parquet(frame, tmp_path / "rows.parquet")
    back = pd.read_parquet(tmp_path / "rows.parquet")
    pd.testing.assert_frame_equal(back, frame.reset_index(drop=True))  # the index is not written
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]


class _DiesMidWrite:
    """A frame whose writer leaves half a file, then fails (a full disk, a bad column)."""

    def to_parquet(self, path, index):
        Path(path).write_bytes(b"PAR1 half a table")
        raise OSError("No space left on device")


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    old = pd.DataFrame({"x": [1, 2]})
    atomic_write_parquet(old, tmp_path / "rows.parquet")
    with pytest.raises(OSError, match="No space"):
        atomic_write_parquet(_DiesMidWrite(), tmp_path / "rows.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rows.parquet"), old)
    with pytest.raises(OSError):
        atomic_write_parquet(_DiesMidWrite(), tmp_path / "new.parquet")
    assert not (tmp_path / "new.parquet").exists()  # never a half file under the real name
