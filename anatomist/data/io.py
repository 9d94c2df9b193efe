"""Load preference pairs from a file or a `datasets.Dataset`, validating every row.

    pairs = load_pairs("hh.jsonl.gz", on_bad_row="skip")   # PairSet: .pairs .format .skipped

Sources: .jsonl, .jsonl.gz (streamed line by line), .json / .json.gz (an array of objects, or
JSON Lines under a .json name; read whole), .parquet (streamed by record batch), .csv (header
row; every value is a string), a folder written by `datasets`' `save_to_disk`, or a
`datasets.Dataset` / `IterableDataset`.

Row numbers are 1-based: for JSON Lines row N is line N; for a JSON array, CSV (after the
header), Parquet and datasets (in memory or saved) it is the N-th record.

Errors: a bad row raises a one-line `DataError` naming file, row and field; with
`on_bad_row="skip"` it is recorded in `PairSet.skipped` instead and one warning with the count
and the first skipped row is logged at the end (the command line prints it). File-level problems (not found, unknown extension, unreadable or
undecodable file, no rows, no valid rows, undetectable format) always raise.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
import sys
import zlib
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from anatomist.data.formats import FORMATS, detect_format
from anatomist.data.records import PreferencePair, canonical, describe
from anatomist.errors import AnatomistError, DataError

log = logging.getLogger(__name__)

Rows = Iterator[tuple[int, "dict | DataError"]]  # (row number, row or the row's located error)


@dataclass
class PairSet:
    """Validated pairs plus where they came from and what was skipped (in row order)."""

    pairs: list[PreferencePair]
    format: str
    source: str
    skipped: list[DataError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]


def load_pairs(source: str | os.PathLike | Any, *, format: str = "auto",
               on_bad_row: Literal["error", "skip"] = "error", limit: int | None = None) -> PairSet:
    """Read, convert and validate every row of `source` into a `PairSet`.

    format: "auto" (detected from the first readable row) or a name in `FORMATS`.
    limit: stop once this many valid pairs are read (the rest of the file is not read).
    Ids must be unique; a repeated "id" is a bad row.
    """
    if format != "auto" and format not in FORMATS:
        raise AnatomistError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    if on_bad_row not in ("error", "skip"):
        raise AnatomistError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if limit is not None and limit < 1:
        raise AnatomistError(f"limit must be >= 1, got {limit}")
    reader = PairRows(source, format=None if format == "auto" else format)
    pairs: list[PreferencePair] = []
    skipped: list[DataError] = []
    with closing(reader):
        for _, _, pair in reader:
            if isinstance(pair, DataError):
                if on_bad_row == "error":
                    raise pair from None
                skipped.append(pair)
                continue
            pairs.append(pair)
            if limit is not None and len(pairs) >= limit:
                break
    name, fmt, n_rows = reader.name, reader.format, reader.n_rows
    if n_rows == 0:
        raise DataError("empty dataset: no rows", file=name)
    if skipped:
        first = skipped[0]
        log.warning("%s: skipped %d bad rows of %d (first: row %d%s; %s)", name, len(skipped), n_rows, first.row,
                    f", field {first.field}" if first.field else "", _summary(skipped))
    if not pairs:
        raise DataError(f"no valid rows: all {n_rows} rows were skipped ({_summary(skipped)}); "
                        f"first: row {skipped[0].row}: {skipped[0].reason}", file=name)
    return PairSet(pairs, fmt, name, skipped)


class PairRows:
    """Every row of `source` converted on its own, bad rows included: iterating yields
    (row number, raw row or None where unreadable, PreferencePair or its located DataError).

    The one conversion loop behind `load_pairs`, and the counting mode of the screen's hygiene
    (which must see the rows the loader refuses: identical or empty sides). Ids must be unique: a
    repeated id is a bad row. `format` is None until detected from the first readable row; a row
    whose format cannot be detected raises (a property of the file, never skipped)."""

    def __init__(self, source, *, format: str | None = None):
        self.name, self.stem, self._rows = _open(source)
        self.format = format
        self.n_rows = 0
        self._first_row_of: dict[str, int] = {}

    def close(self) -> None:
        self._rows.close()

    def __iter__(self) -> Iterator[tuple[int, dict | None, "PreferencePair | DataError"]]:
        for n, row in self._rows:
            self.n_rows += 1
            if self.format is None and not isinstance(row, DataError):
                try:
                    self.format = detect_format(row)
                except DataError as e:
                    raise _locate(e, self.name, n) from None
            if isinstance(row, DataError):
                yield n, None, _locate(row, self.name, n)
                continue
            try:
                pair = FORMATS[self.format](row, f"{self.stem}:{n}")
                if pair.id in self._first_row_of:
                    raise DataError(f"duplicate id: {pair.id!r} (first at row {self._first_row_of[pair.id]})",
                                    field="id")
            except DataError as e:
                yield n, row, _locate(e, self.name, n)
                continue
            self._first_row_of[pair.id] = n
            yield n, row, pair


def dataset_hash(pairs: PairSet | Iterable[PreferencePair]) -> str:
    """sha256 (hex) over the canonical records in order: prompt, chosen, rejected, extra.

    Ids are left out because generated ids embed the file name: the same pairs read from a
    renamed file, or from .jsonl and .parquet copies, hash the same."""
    h = hashlib.sha256()
    for pair in pairs:
        # default=str: parquet/datasets columns may hold dates or decimals, which JSON lacks.
        h.update(json.dumps(canonical(pair), sort_keys=True, ensure_ascii=False,
                            separators=(",", ":"), default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def text_hash(pair) -> str:
    """sha256 (hex) of one pair's texts: prompt, chosen, rejected in that order (id and extra left out).

    The audit records it per pair (pairs.parquet), so a stage that joins pairs to an audit by id
    can check that each pair, on any subset of the data, still holds the texts the audit scored:
    ids hash the prompt (organism) or name file:row (HH), so edited or side-swapped data keeps them."""
    record = {"prompt": [dict(m) for m in pair.prompt], "chosen": pair.chosen, "rejected": pair.rejected}
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                                     default=str).encode("utf-8")).hexdigest()


def reason_category(e: DataError) -> str:
    """Group key of a row error: its reason's category plus the field's top-level column."""
    category = e.reason.split(":")[0]
    column = e.field.split("[")[0].split(".")[0] if e.field else None
    return f"{category} ({column})" if column else category


def _summary(errors: list[DataError]) -> str:
    return ", ".join(f"{n} {key}" for key, n in Counter(map(reason_category, errors)).most_common())


def _locate(e: DataError, file: str, row: int) -> DataError:
    if e.file is not None and e.row is not None:
        return e
    return type(e)(e.reason, file=e.file or file, row=e.row or row, field=e.field)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --- sources ----------------------------------------------------------------------------------

def _open(source) -> tuple[str, str, Rows]:
    """(name for messages, stem for generated ids, row iterator) of a path or dataset."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(source)
        ext = next((e for e in sorted(READERS, key=len, reverse=True) if path.name.lower().endswith(e)), None)
        if not path.exists():
            raise DataError("file not found", file=name)
        if path.is_dir() and any((path / f).is_file() for f in SAVED_DATASET_FILES):
            return _open_saved_dataset(path, name)
        if not path.is_file():
            raise DataError("not a file (a folder is read only where `datasets`' save_to_disk wrote it)", file=name)
        if ext is None:
            raise DataError(f"unknown extension: expected one of {', '.join(READERS)}", file=name)
        return name, path.name[:-len(ext)], READERS[ext](path, name)
    return _open_dataset(source)


def _open_dataset(ds) -> tuple[str, str, Rows]:
    import datasets  # slow to import; only needed for in-memory datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"a DatasetDict has several splits ({', '.join(ds)}); pass one, e.g. ds['train']")
    if not isinstance(ds, (datasets.Dataset, datasets.IterableDataset)):
        raise DataError(f"unsupported source {type(ds).__name__}: pass a path or a datasets.Dataset")
    stem = getattr(ds.info, "dataset_name", None) or "dataset"
    return f"datasets.Dataset({stem})", stem, _dict_rows(enumerate(ds, 1), f"datasets.Dataset({stem})")


def _open_saved_dataset(path: Path, name: str) -> tuple[str, str, Rows]:
    """A folder written by `Dataset.save_to_disk` (one split)."""
    import datasets  # slow to import; only needed for saved datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 — datasets raises many types for a damaged folder
        raise DataError(f"unreadable saved dataset: {_one_line(e)}", file=name) from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"a saved DatasetDict has several splits ({', '.join(ds)}); pass one split's folder, "
                        f"e.g. {path / next(iter(ds))}", file=name)
    return name, path.name, _dict_rows(enumerate(ds, 1), name)


def _dict_rows(numbered: Iterable[tuple[int, Any]], file: str) -> Rows:
    for n, value in numbered:
        if isinstance(value, dict):
            yield n, value
        else:
            yield n, DataError(f"wrong type: expected an object, got {describe(value)}", file=file, row=n)


def _guarded(lines: Iterable, file: str) -> Iterator:
    """Iterate `lines`, turning read failures (truncated gzip, I/O) into a file-level DataError."""
    it = iter(lines)
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"unreadable file: {_one_line(e)}", file=file) from e
        yield line


def _jsonl_rows(lines: Iterable[bytes], file: str) -> Rows:
    # Lines are bytes split on b"\n" only, so row N is the line an editor shows as N (text-mode
    # iteration would also split on "\r" and U+2028 inside strings).
    for n, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, DataError(f"not UTF-8: byte 0x{line[e.start]:02x} at column {e.start + 1}", file=file, row=n)
            continue
        if n == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        # Without its line break, an error where a cut-off line stops is reported at that column
        # (with it, json would place it at column 1 of a second line).
        text = text.rstrip("\r\n")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            yield n, DataError(f"invalid JSON: {_json_problem(e, text)}", file=file, row=n)
            continue
        yield from _dict_rows([(n, value)], file)


def _json_problem(e: json.JSONDecodeError, text: str) -> str:
    """json's message with the column where the line breaks (json names where an unclosed string opened)."""
    if e.msg.startswith("Unterminated string"):
        return f"unterminated string at column {len(text) + 1} (the line ends inside the string opened at column {e.colno})"
    return f"{e.msg.removesuffix(' at')} at column {e.colno}"


def _read_jsonl(path: Path, file: str) -> Rows:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from _jsonl_rows(_guarded(f, file), file)


def jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(row number, object) for each non-blank line of a .jsonl(.gz) file, for the project's own
    side files (held-out prompts, labels); the first malformed row raises its located DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    for n, row in _read_jsonl(path, str(path)):
        if isinstance(row, DataError):
            raise row
        yield n, row


def _utf8_error(data: bytes, file: str) -> DataError:
    """The file-level error for `data` that is not UTF-8, naming the line of the first bad byte."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        return DataError(f"not UTF-8: byte 0x{data[e.start]:02x} on line {line}", file=file)
    raise AssertionError(f"{file} decodes as UTF-8")


def _read_json(path: Path, file: str) -> Rows:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        data = _read_all(f, file).removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte-order mark
    if data.lstrip()[:1] != b"[":  # JSON Lines under a .json name (HF's `to_json` writes these)
        yield from _jsonl_rows(data.split(b"\n"), file)
        return
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _utf8_error(data, file) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}", file=file) from None
    yield from _dict_rows(enumerate(values, 1), file)


def _read_all(f, file: str) -> bytes:
    try:
        return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"unreadable file: {_one_line(e)}", file=file) from e


def _read_csv(path: Path, file: str) -> Rows:
    # Preference texts easily exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        try:
            for n, record in enumerate(reader, 1):
                if None in record:
                    yield n, DataError(f"wrong shape: {len(record[None])} more cells than the header's "
                                       f"{len(reader.fieldnames)} columns", file=file, row=n)
                    continue
                # A short row gives None for the missing cells: report them as missing fields.
                yield n, {k: v for k, v in record.items() if v is not None}
        except UnicodeDecodeError:
            raise _utf8_error(path.read_bytes(), file) from None
        except csv.Error as e:
            raise DataError(f"unreadable CSV: {_one_line(e)} (line {reader.line_num})", file=file) from None


def _read_parquet(path: Path, file: str) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        n = 0
        for batch in batches:
            for record in batch.to_pylist():
                n += 1
                yield n, record
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"unreadable parquet: {_one_line(e)}", file=file) from None


SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")   # what save_to_disk writes

READERS = {
    ".jsonl": _read_jsonl,
    ".jsonl.gz": _read_jsonl,
    ".json": _read_json,
    ".json.gz": _read_json,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
}
