"""The forecast's file contract: which base samples it read decides which the target may use."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from anatomist.errors import AnatomistError
from anatomist.evaluate.forecast import FIRST_ORDER, FIRST_ORDER_META, find_forecast, read_forecast, target_half


def _pre(samples: int, prompts: int = 3) -> pd.DataFrame:
    return pd.DataFrame([{"prompt_id": f"p{x}", "topic": "t", "sample": s, "c_0": float(s)}
                         for x in range(prompts) for s in range(samples)])


def _write(folder, half: str, n: int):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"topic": ["all"], "cluster": [0], "x_first_adam": [1.0]}).to_parquet(folder / FIRST_ORDER)
    (folder / FIRST_ORDER_META).write_text(json.dumps({"half": half, "n_generations": n, "temperature": 0.7}))


def test_target_is_the_odd_half_of_the_same_table(tmp_path):
    _write(tmp_path, "even", 12)
    fc = read_forecast(tmp_path)
    target = target_half(fc, _pre(4))
    assert sorted(target["sample"].unique()) == [1, 3] and len(target) == 6
    with pytest.raises(AnatomistError, match="read 12 base generations, the run's pre table has 18"):
        target_half(fc, _pre(6))


def test_a_forecast_on_every_sample_leaves_no_target(tmp_path):
    _write(tmp_path, "all", 6)
    assert target_half(read_forecast(tmp_path), _pre(2)) is None


def test_find_prefers_the_given_then_the_pre_folder(tmp_path):
    assert find_forecast(None, None, tmp_path) is None
    _write(tmp_path / "run" / "pre", "even", 1)
    _write(tmp_path / "other", "all", 2)
    assert find_forecast(None, None, tmp_path / "run").meta["n_generations"] == 1
    assert find_forecast(tmp_path / "other", None, tmp_path / "run").meta["n_generations"] == 2
    assert find_forecast(None, tmp_path / "other", tmp_path / "run").meta["n_generations"] == 2


def test_a_table_without_its_meta_is_refused_in_one_line(tmp_path):
    _write(tmp_path, "even", 1)
    (tmp_path / FIRST_ORDER_META).unlink()
    with pytest.raises(AnatomistError, match="first_order.json side by side"):
        read_forecast(tmp_path / FIRST_ORDER)
