"""`anatomist data ...`: thin CLI over `load_pairs` and `inspect_pairs`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anatomist.data.formats import FORMATS, FormatError
from anatomist.data.inspect import SIDES, inspect_pairs
from anatomist.data.io import load_pairs
from anatomist.errors import DataError

app = typer.Typer(
    help="Preference datasets: validate and summarize. Formats: TRL standard and conversational, "
         "Anthropic HH-RLHF transcripts, LLaMA-Factory ShareGPT DPO; files: .jsonl(.gz), .json, "
         ".parquet, .csv.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

BAR_WIDTH = 40
MAX_REPORT_LINES = 20

# One option, one behaviour, in every command that reads preference pairs.
ON_BAD_ROW_HELP = "error: stop at the first bad row; skip: skip it and go on (the count and the first are printed)."
BAD_ROW_HINT = "--on-bad-row skip skips and counts such rows"


def on_bad_row_option():
    """The `--on-bad-row {error,skip}` typer option (default error) shared by every command that reads pairs."""
    return typer.Option("error", "--on-bad-row", help=ON_BAD_ROW_HELP)


def read_pairs(source, *, on_bad_row: str = "error", format: str = "auto", limit: int | None = None):
    """`load_pairs` for a command line: a bad row's error names the --on-bad-row option (load_pairs
    itself logs the skipped count and the first skipped row)."""
    try:
        return load_pairs(source, format=format, on_bad_row=on_bad_row, limit=limit)
    except DataError as e:
        if e.row is None or isinstance(e, FormatError):
            raise
        raise DataError(f"{e.reason} ({BAD_ROW_HINT})", file=e.file, row=e.row, field=e.field) from None


@app.callback()
def _data() -> None:
    # A callback keeps `inspect` a subcommand even while it is this app's only command.
    pass


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="Dataset file (.jsonl, .jsonl.gz, .json, .parquet, .csv) or a `datasets` save_to_disk folder."),
    fmt: str = typer.Option("auto", "--format", "-f", help=f"auto, or one of: {', '.join(FORMATS)}."),
    on_bad_row: Literal["error", "skip"] = typer.Option("error", "--on-bad-row", help=ON_BAD_ROW_HELP),
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", help="Tokenizer (HF id, folder, or smollm2-135m-instruct): adds token lengths."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Read at most this many valid pairs."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON instead."),
) -> None:
    """Validate a preference dataset and summarize what it holds.

    Shows the detected format, valid and skipped rows by reason, prompt turns, length
    histograms, and how often chosen is the longer response.

    Example:

        anatomist data inspect ../shared/data/hh-rlhf-harmless-base-test-dev.jsonl.gz --on-bad-row skip
    """
    pairs = read_pairs(file, format=fmt, on_bad_row=on_bad_row, limit=limit)
    stats = inspect_pairs(pairs, tokenizer=tokenizer)
    if as_json:
        typer.echo(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        render(stats, Console(highlight=False))


def render(stats: dict, console: Console) -> None:
    """Print `inspect_pairs` output for a terminal."""
    c = stats["counts"]
    console.print(f"[bold]{escape(stats['source'])}[/bold]")
    console.print(f"format: [bold]{stats['format']}[/bold]   rows: {c['rows']}   valid: {c['valid']}   "
                  f"skipped: {c['skipped']}")
    for reason, n in stats["skipped_by_reason"].items():
        console.print(f"  skipped {n:>6}  {reason}", markup=False)
    console.print(f"chosen longer than rejected: {stats['chosen_longer']:.1%} of pairs "
                  f"(same length: {stats['same_length']:.1%})")
    console.print(f"example ids: {', '.join(stats['example_ids'])}", markup=False)

    console.print("\n[bold]prompt turns[/bold] (messages before the responses)")
    turns = stats["prompt_turns"]
    _bars(console, [str(k) for k in turns], list(turns.values()))

    for unit in ("chars", "tokens"):
        if unit not in stats:
            continue
        table = Table(title=f"length in {unit}", title_justify="left")
        for col in ("", "min", "median", "mean", "p90", "max"):
            table.add_column(col, justify="right")
        for side in SIDES:
            s = stats[unit][side]
            table.add_row(side, str(s["min"]), f"{s['median']:.0f}", f"{s['mean']:.0f}",
                          f"{s['p90']:.0f}", str(s["max"]))
        console.print()
        console.print(table)
        for side in SIDES:
            h = stats[unit][side]["histogram"]
            e = h["edges"]
            console.print(f"{side} ({unit})")
            _bars(console, [f"{e[i]}–{e[i + 1] - 1}" for i in range(len(h["counts"]))], h["counts"])

    report = stats["validation"]
    console.print(f"\n[bold]validation[/bold]: {len(report) or 'no'} rows skipped")
    for line in report[:MAX_REPORT_LINES]:
        console.print(f"  {line}", markup=False, soft_wrap=True)
    if len(report) > MAX_REPORT_LINES:
        console.print(f"  … and {len(report) - MAX_REPORT_LINES} more")


def _bars(console: Console, labels: list[str], counts: list[int]) -> None:
    top = max(counts) or 1
    width = max(map(len, labels))
    for label, n in zip(labels, counts):
        bar = "█" * round(BAR_WIDTH * n / top) or ("▏" if n else "")
        console.print(f"  {label:>{width}}  {n:>7}  {bar}", markup=False)
