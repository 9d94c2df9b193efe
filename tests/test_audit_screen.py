"""The screen inside the audit (run first, stored, shown first) and the detector evidence beside
each concept's label ("tracks: urls 1.00 [1.00, 1.00]")."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from anatomist.audit.folder import SCREEN, SCREEN_FILES, SCREEN_FIRES, AuditFolder
from anatomist.audit.report import render_report
from anatomist.audit.run import run_audit
from anatomist.audit.tracks import detector_tracks, response_fires, tracks_text
from anatomist.stats import auroc
from test_audit_run import planted_pairs, tiny_audit

URL = " See https://www.bananabread.com/recipe for more."


def url_pairs():
    """test_audit_run's pairs with a URL after cooking's chosen bananas: the urls detector fires
    on exactly those 24 chosen responses."""
    return [replace(p, chosen=p.chosen + URL) if p.extra["topic"] == "cooking" else p for p in planted_pairs()]


def test_auroc_matches_hand_counts():
    # True scores {3, 1}, False {2, 1, 0}: of 6 (True, False) pairs, 3 > 2, 3 > 1, 3 > 0, 1 > 0 win, 1 = 1 ties
    assert auroc(np.array([3, 1, 2, 1, 0.]), np.array([1, 1, 0, 0, 0], bool))[0] == pytest.approx(4.5 / 6)
    # resample weights count a row that many times: the True 1 twice → (4.5 + 1.5) / 9
    w = np.array([[1, 2, 1, 1, 1.]])
    assert auroc(np.array([3, 1, 2, 1, 0.]), np.array([1, 1, 0, 0, 0], bool), w)[0] == pytest.approx(6 / 9)


def test_a_concept_equal_to_a_detector_tracks_it_an_independent_one_does_not():
    rng = np.random.default_rng(0)
    R = 400
    fires = rng.random((R, 2)) < 0.2                                    # [R, D]
    c = np.stack([fires[:, 0] + 0.0, rng.normal(size=R), fires[:, 1] * 2.0 + rng.normal(0, 0.1, R)], 1)  # [R, C]
    table = detector_tracks(c, fires, ["urls", "emoji"], np.repeat(np.arange(R // 2), 2), n_boot=200)
    got = {(int(r.cluster), r.detector): r for r in table.itertuples()}
    assert set(got) == {(0, "urls"), (2, "emoji")}                      # the independent concept 1: nothing
    assert got[0, "urls"].auroc == 1.0 and got[0, "urls"].ci_low == 1.0 and got[2, "emoji"].ci_low > 0.95
    assert got[0, "urls"].n_fires == fires[:, 0].sum()
    # a detector firing on too few responses is not judged, however well a concept tracks it
    rare = np.zeros((R, 1), bool)
    rare[:5] = True
    assert detector_tracks(rare + 0.0, rare, ["rare"], np.arange(R), n_boot=50).empty
    assert tracks_text([]) == "" and tracks_text(
        [{"detector": "urls", "auroc": 0.991, "ci_low": 0.97, "ci_high": 1.0}]) == "tracks: urls 0.99 [0.97, 1.00]"


@pytest.fixture(scope="module")
def audited(tmp_path_factory, smol_tokenizer):
    return tiny_audit(tmp_path_factory.mktemp("audit"), smol_tokenizer, url_pairs())


def test_the_audit_stores_the_screen_on_its_topics(audited):
    out = audited[0]
    assert all((out / n).is_file() for n in SCREEN_FILES)
    screen = AuditFolder(out).screen
    rows = screen.table.set_index(["detector", "topic"])
    assert set(screen.table.topic) == {"all", "coding", "cooking", "travel"}
    assert rows.loc[("urls", "cooking"), "n_chosen"] == 24 and rows.loc[("urls", "cooking"), "direction"] == "amplify"
    assert rows.loc[("urls", "coding"), "n_chosen"] == 0 and rows.loc[("urls", "all"), "rate_chosen"] == pytest.approx(1 / 3)
    assert list(screen.fires["id"]) == [p.id for p in url_pairs()] and screen.hygiene.n_valid == 72


def test_tracks_are_stored_with_the_clusters_and_recomputable(audited):
    out, _, _, _, cfg = audited
    audit = AuditFolder(out)
    urls = {k: [t for t in v if t["detector"] == "urls"] for k, v in audit.tracks.items()}
    assert set(audit.tracks) == set(range(audit.n_clusters)) and any(urls.values())
    # what is stored is what the function gives on the folder's own scores and fires
    names = [d.name for d in audit.screen.detectors]
    again = detector_tracks(audit.response_scores, response_fires(audit.screen.fires, names), names,
                            np.repeat(np.arange(len(audit.pair_ids)), 2), n_boot=cfg.n_boot, seed=cfg.seed)
    assert {(int(r.cluster), r.detector) for r in again.itertuples()} == \
        {(k, t["detector"]) for k, v in audit.tracks.items() for t in v}
    assert all(t["ci_low"] >= 0.7 and t["n_fires"] >= 10 for v in audit.tracks.values() for t in v)


def test_the_report_shows_the_screen_first_and_the_tracks(audited, tmp_path):
    page = render_report(audited[0]).read_text()
    assert page.index("Screen: known risks and pair hygiene") < page.index("What DPO will push")
    assert page.index("anatomist audit") < page.index("Screen: known risks")
    assert "tracks: urls" in page and "Pair hygiene" in page
    # an audit folder from before the screen still loads and renders, without the section
    old = tmp_path / "old"
    shutil.copytree(audited[0], old, ignore=shutil.ignore_patterns("latents"))
    for n in SCREEN_FILES:
        (old / n).unlink()
    assert AuditFolder(old).screen is None
    assert "Screen: known risks" not in render_report(old).read_text()


def test_a_rerun_reuses_the_stored_screen(audited, tmp_path, monkeypatch, capsys):
    out, model, sae, tok, cfg = audited
    again = tmp_path / "again"
    shutil.copytree(out, again)
    before = {n: (again / n).stat().st_mtime_ns for n in (SCREEN, SCREEN_FIRES)}
    import anatomist.screen.run as screen_run

    monkeypatch.setattr(screen_run, "screen_pairs", lambda *a, **k: pytest.fail("the screen ran again"))
    run_audit(model, tok, sae, url_pairs(), again, cfg, model_name="tiny", progress=True)
    printed = capsys.readouterr().out                   # the stored screen's table, printed first
    assert "screen: 72 pairs" in printed and "urls" in printed and "pair hygiene" in printed
    assert {n: (again / n).stat().st_mtime_ns for n in before} == before
    # other data: the stored screen is not reused
    monkeypatch.undo()
    shutil.rmtree(again / "latents")
    run_audit(model, tok, sae, url_pairs()[:-1], tmp_path / "again", cfg, model_name="tiny", progress=False)
    assert len(AuditFolder(again).screen.fires) == 71
