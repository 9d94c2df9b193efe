"""anatomist.parallel: rank slices, and the one torchrun launcher: a single process when not launched,
the process group joined and always torn down when launched (world 1 here; 2 ranks run in the
*_distributed tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist
from conftest import REPO

from anatomist.errors import AnatomistError
from anatomist.parallel import DataParallel, distributed_main, lead_first, rank_slice

LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_rank_slices_cover_everything_once():
    for n in (0, 1, 5, 7, 64):
        for world in (1, 2, 3, 8):
            slices = [rank_slice(n, r, world) for r in range(world)]
            assert [i for s in slices for i in s] == list(range(n))
            assert max(map(len, slices)) - min(map(len, slices)) <= 1


@pytest.fixture
def not_launched(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


def test_not_launched_runs_as_one_process(not_launched, capsys):
    order = []
    with distributed_main() as par:
        assert par == DataParallel(0, 1) and par.lead
        assert not dist.is_initialized()  # no group was made: barriers must not touch torch.distributed
        with lead_first(par):
            par.barrier()
            order.append("body")
        print("report")
    assert order == ["body"] and capsys.readouterr().out == "report\n"  # rank 0 keeps its stdout


def test_not_launched_user_error_is_one_line_and_exit_2(not_launched, capsys):
    with pytest.raises(SystemExit) as exit_, distributed_main():
        raise AnatomistError("pairs.jsonl: file not found")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: pairs.jsonl: file not found\n"
    with pytest.raises(ValueError), distributed_main():  # a bug keeps its traceback
        raise ValueError("internal")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launched_joins_the_group_and_tears_it_down_on_error(monkeypatch, capsys):
    env = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_, distributed_main("gloo") as par:
        assert dist.is_initialized() and par == DataParallel(0, 1)
        par.barrier()
        raise AnatomistError("bad row")
    assert exit_.value.code == 2 and not dist.is_initialized()
    assert capsys.readouterr().err == "error: [rank 0] bad row\n"


@pytest.mark.parametrize("stage", ["capture", "audit", "sae", "train"])
def test_entry_points_without_torchrun_fall_back_to_one_process(stage, tmp_path):
    """`python -m anatomist.<stage>.distributed` without a launcher runs the stage in one process
    (capture and audit used to stop on `RANK expected`): a missing file is its one-line error."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    proc = subprocess.run([sys.executable, "-m", f"anatomist.{stage}.distributed", "--data", tmp_path / "none.jsonl",
                           "--out", tmp_path / "out"], cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == f"error: {tmp_path / 'none.jsonl'}: file not found\n"
