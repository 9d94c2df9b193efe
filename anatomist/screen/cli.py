"""`anatomist screen DATA`: thin CLI over `read_with_hygiene`, `screen_pairs` and `save`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.console import Console

from anatomist.data.formats import FORMATS
from anatomist.errors import DataError


def screen(
    data: Path = typer.Argument(..., help="Preference file: .jsonl(.gz), .json, .parquet or .csv (any format "
                                          "`anatomist data inspect` reads)."),
    topic_column: Optional[str] = typer.Option(None, "--topic-column", help="Column holding each pair's topic: adds "
                                               "per-topic rows."),
    out: Path = typer.Option(Path("screen"), "--out", help="Folder for screen.parquet, hygiene.json, screen.html."),
    write_clean: Optional[Path] = typer.Option(None, "--write-clean", help="Write the file without the pairs hygiene "
                                               "flags (and skipped rows) here, as JSON Lines; never the input."),
    detector: List[str] = typer.Option([], "--detector", help="Add a detector: a registry name that is off by "
                                       "default (e.g. harmful_compliance) or regex:NAME=PATTERN. Repeatable."),
    on_bad_row: Literal["error", "skip"] = typer.Option("error", "--on-bad-row", help="error: stop at the first "
                                                        "malformed row; skip: count it and go on. Identical or "
                                                        "empty sides are always counted, never fatal."),
    fmt: str = typer.Option("auto", "--format", "-f", help=f"auto, or one of: {', '.join(FORMATS)}."),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="The training max length (tokens "
                                             "with --tokenizer, else characters): flags pairs whose sides are the "
                                             "same once prompt + response is cut to it."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer for --max-length (HF id, folder, "
                                            "or smollm2-135m-instruct); characters without one."),
    alpha: float = typer.Option(0.05, "--alpha", help="FDR level for a direction."),
) -> None:
    """Screen a preference file for known post-training risks and pair hygiene, without a model.

    Detectors (flattery, over-formatting, URLs, evaluation awareness, refusal, emoji, language
    switches, length, …) run on both sides of every pair; the table shows each one's firing rate
    on chosen vs rejected (positive diff = chosen fires more: DPO would amplify it), dataset-wide
    and per topic, with the audit's statistics. Hygiene lists identical, near-identical,
    contradictory, template-only and template-leaking pairs by id.

    Example:

        anatomist screen ../shared/data/hh-rlhf-harmless-base-test-dev.jsonl.gz --out screen-hh --detector 'regex:apology=\\bsorry\\b' --write-clean hh.clean.jsonl.gz
    """
    from anatomist.screen.detectors import resolve
    from anatomist.screen.hygiene import check_clean_target, read_with_hygiene, write_clean as write_clean_file
    from anatomist.screen.report import render, save
    from anatomist.screen.run import screen_pairs

    extra = resolve([], detector) if detector else []          # refuse bad options before reading
    if write_clean is not None:
        check_clean_target(data, write_clean)
    pairs, hygiene = read_with_hygiene(data, format=fmt, on_bad_row=on_bad_row, max_length=max_length,
                                       tokenizer=tokenizer)
    try:
        result = screen_pairs(pairs.pairs, extra_detectors=extra, topics=topic_column, hygiene=hygiene, alpha=alpha)
    except DataError as e:   # a pair without the topic column: name the file too
        raise DataError(e.reason, file=str(data), row=e.row, field=e.field) from None
    console = Console(highlight=False, width=max(Console().width, 120))
    render(result, console)
    paths = save(result, out, title=f"anatomist screen: {data.name}")
    console.print(f"\nwrote {', '.join(str(p) for p in paths.values())}", markup=False)
    if write_clean is not None:
        n = write_clean_file(hygiene, data, write_clean, format=fmt)
        console.print(f"wrote {write_clean}: {n} of {hygiene.n_rows} rows", markup=False)
