"""Acceptance vs target entropy: does the draft stay accepted as the policy gets hotter?

For each head, drafting mode (rejection sampling "rs" / greedy drafts) and temperature, decode
prompts speculatively and record every draft test: depth i, H(p_i) (entropy in nats of the final
sampling distribution at that position) and whether draft i was accepted. The slope of a linear
fit of acceptance on H(p) over depth-1 tests (each round has exactly one, so tests are not
selected by earlier acceptances) is the headline number: a TV-trained head under RS should keep
acceptance flat as entropy rises, a CE head much less so (Bebop reports −0.06 vs −1.68).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from anatomist.spec_decode.drafters import MTPDrafter
from anatomist.spec_decode.generate import generate
from anatomist.spec_decode.stats import LineFit, linear_fit

log = logging.getLogger(__name__)

__all__ = ["Record", "collect", "slopes", "render_html", "DEFAULT_TEMPERATURES"]

DEFAULT_TEMPERATURES = (0.3, 0.6, 0.9, 1.2, 1.5)


@dataclass(frozen=True)
class Record:
    head: str
    mode: str
    temperature: float
    depth: int
    entropy: float
    accepted: bool


def collect(model, heads: dict, prompts: list[list[int]], *, temperatures=DEFAULT_TEMPERATURES,
            modes=("rs", "greedy"), gamma: int = 3, max_new_tokens: int = 48, batch_size: int = 8,
            eos_token_id=None, seed: int = 0, progress: bool = True) -> list[Record]:
    """Draft tests for every (head, mode, temperature) over the prompts."""
    from rich.progress import Progress

    jobs = [(name, mode, t) for name in heads for mode in modes for t in temperatures]
    out: list[Record] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("acceptance vs entropy", total=len(jobs))
        for name, mode, t in jobs:
            gen = torch.Generator().manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                res = generate(model, prompts[start:start + batch_size], drafter=MTPDrafter(heads[name]),
                               gamma=gamma, temperature=t, max_new_tokens=max_new_tokens, draft_mode=mode,
                               eos_token_id=eos_token_id, generator=gen, record=True)
                out += [Record(name, mode, t, d, h, a) for d, h, a in res.stats.records]
            bar.update(task, advance=1)
    return out


def slopes(records: list[Record], depth: int = 1) -> dict[tuple[str, str], dict]:
    """Per (head, mode): linear fit of acceptance (0/1) on H(p) over depth-`depth` tests, plus the
    mean acceptance and mean entropy per temperature."""
    out = {}
    for key in dict.fromkeys((r.head, r.mode) for r in records):
        rs = [r for r in records if (r.head, r.mode) == key and r.depth == depth]
        fit: LineFit = linear_fit(torch.tensor([r.entropy for r in rs]), torch.tensor([float(r.accepted) for r in rs]))
        per_t = {}
        for t in dict.fromkeys(r.temperature for r in rs):
            sel = [r for r in rs if r.temperature == t]
            per_t[t] = {"n": len(sel), "acceptance": sum(r.accepted for r in sel) / len(sel),
                        "entropy": sum(r.entropy for r in sel) / len(sel)}
        out[key] = {"fit": fit, "per_temperature": per_t, "acceptance": sum(r.accepted for r in rs) / max(len(rs), 1)}
    return out


def _binned(rs: list[Record], bins: int = 12) -> tuple[list[float], list[float], list[int]]:
    if not rs:
        return [], [], []
    h = torch.tensor([r.entropy for r in rs])
    a = torch.tensor([float(r.accepted) for r in rs])
    edges = torch.quantile(h, torch.linspace(0, 1, bins + 1))
    xs, ys, ns = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (h >= lo) & (h <= hi)
        if sel.sum() > 0:
            xs.append(float(h[sel].mean()))
            ys.append(float(a[sel].mean()))
            ns.append(int(sel.sum()))
    return xs, ys, ns


def render_html(records: list[Record], title: str = "Draft acceptance vs target entropy", depth: int = 1) -> str:
    """A self-contained HTML page (anatomist/html.py: plotly inlined, no network): binned acceptance
    vs H(p) with fitted lines, and the slopes as a table."""
    from anatomist.html import esc, finite, page, plot, table, tag

    fits = slopes(records, depth)
    data = []
    for (head, mode), info in fits.items():
        rs = [r for r in records if (r.head, r.mode) == (head, mode) and r.depth == depth]
        xs, ys, ns = _binned(rs)
        name = esc(f"{head} / {mode}")   # head names come from folder names: plotly renders HTML in them
        data.append({"type": "scatter", "mode": "markers", "name": name, "x": finite(xs), "y": finite(ys),
                     "text": [f"n={n}" for n in ns]})
        f = info["fit"]
        if xs:
            lx = [min(xs), max(xs)]
            data.append({"type": "scatter", "mode": "lines", "name": f"{name}: slope {f.slope:+.3f}", "x": lx,
                         "y": finite([f.intercept + f.slope * x for x in lx]), "showlegend": True})
    layout = {"xaxis": {"title": {"text": "target entropy H(p) [nats]"}},
              "yaxis": {"title": {"text": f"P(draft {depth} accepted)"}, "range": [0, 1.02]}}
    figure = plot("acceptance", data, layout)
    rows = [[esc(h), esc(m), f"{i['fit'].slope:+.4f}", f"[{i['fit'].slope_ci[0]:+.4f}, {i['fit'].slope_ci[1]:+.4f}]",
             f"{i['acceptance']:.3f}", str(i["fit"].n)] for (h, m), i in fits.items()]
    note = (f"Each point is a quantile bin of depth-{depth} draft tests; lines are least-squares fits of "
            "acceptance (0/1) on H(p).")
    body = (tag("h1", esc(title)) + tag("p", esc(note)) + table(["head", "mode", "slope / nat", "95% CI",
                                                                 "mean acceptance", "tests"], rows) + figure)
    return page(title, body, plots=[figure])
