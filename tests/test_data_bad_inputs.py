"""Malformed inputs: each raises one `DataError` whose one-line message names file, row and field.

Row-level cases are checked twice: on_bad_row="error" raises exactly that message, and
on_bad_row="skip" records exactly that message and keeps the good rows. File-level cases raise
in both modes.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anatomist.data import load_pairs
from anatomist.data.formats import IMPLICIT_PROMPT
from anatomist.errors import AnatomistError, DataError

OK = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
CONV = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}]}
HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
SG = {"conversations": [{"from": "human", "value": "Hi"}], "chosen": {"from": "gpt", "value": "Hello!"},
      "rejected": {"from": "gpt", "value": "Go away."}}


def msg(role, content):
    return {"role": role, "content": content}


def jsonl(*rows) -> bytes:
    """One line per row: a dict is dumped as JSON, bytes/str are written as they are."""
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows]
    return b"".join(line + b"\n" for line in lines)


def parquet(*rows):
    return lambda path: pq.write_table(pa.Table.from_pylist(list(rows)), path)


def write(path, content):
    if callable(content):
        content(path)
    elif content is not None:
        path.write_bytes(content)
    return path


# (file name, content, bad row, field, reason); every file also holds at least one good row.
ROW_CASES = [
    # standard
    ("d.jsonl", jsonl(OK, {"prompt": "Hi", "rejected": "No"}), 2, "chosen", "missing field"),
    ("d.jsonl", jsonl(OK, {**OK, "rejected": "  \n "}), 2, "rejected", "empty response: '  \\n '"),
    ("d.jsonl", jsonl(OK, {**OK, "chosen": "Same.", "rejected": " Same. "}), 2, "rejected",
     "identical chosen and rejected"),
    ("d.jsonl", jsonl(OK, {**OK, "chosen": 42}), 2, "chosen", "wrong type: expected a string, got int 42"),
    ("d.jsonl", jsonl(OK, {**OK, "prompt": None}), 2, "prompt", "wrong type: expected a string, got null"),
    ("d.jsonl", jsonl(OK, {**OK, "rejected": True}), 2, "rejected", "wrong type: expected a string, got bool true"),
    ("d.jsonl", jsonl(OK, {**OK, "prompt": "   "}), 2, "prompt", "empty prompt: '   '"),
    # conversational
    ("c.jsonl", jsonl(CONV, {**CONV, "prompt": [msg("tool", "x")]}), 2, "prompt[0].role",
     "bad message role: 'tool' (expected one of system, user, assistant)"),
    ("c.jsonl", jsonl(CONV, {**CONV, "prompt": [{"role": "user"}]}), 2, "prompt[0]",
     "bad message: missing content (keys: ['role'])"),
    ("c.jsonl", jsonl(CONV, {**CONV, "chosen": [msg("assistant", [{"type": "text", "text": "x"}])]}), 2,
     "chosen[0].content", "wrong type: expected string content, got list (multimodal content parts are not supported)"),
    ("c.jsonl", jsonl(CONV, {**CONV, "prompt": ["Hi"]}), 2, "prompt[0]", 'bad message: expected an object, got string "Hi"'),
    ("c.jsonl", jsonl(CONV, {**CONV, "chosen": [msg("assistant", "a"), msg("assistant", "b")]}), 2, "chosen",
     "wrong shape: expected exactly one assistant message, got 2 (roles: assistant, assistant)"),
    ("c.jsonl", jsonl({"chosen": [msg("user", "u"), msg("assistant", "a")], "rejected": [msg("user", "u"), msg("assistant", "b")]},
                      {"chosen": [msg("user", "u"), msg("assistant", "a"), msg("user", "u2"), msg("assistant", "a2")],
                       "rejected": [msg("user", "u"), msg("assistant", "b")]}), 2, "chosen",
     "wrong shape: expected exactly one assistant message after the 1 shared prompt messages, got 3 "
     "(roles: assistant, user, assistant)"),
    ("c.jsonl", jsonl(CONV, {**CONV, "chosen": [msg("user", "x")]}), 2, "chosen[0].role",
     "bad message role: the response must be 'assistant', got 'user'"),
    ("c.jsonl", jsonl({"chosen": [msg("user", "u"), msg("assistant", "a")], "rejected": [msg("user", "u"), msg("assistant", "b")]},
                      {"chosen": [msg("user", "u"), msg("assistant", "a")], "rejected": [msg("user", "u"), msg("assistant", "a")]}),
     2, "rejected", "identical chosen and rejected: the conversations are equal"),
    # hh
    ("h.jsonl", jsonl(HH, {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!  Human: so?\n\nAssistant: Yes.",
                           "rejected": "\n\nHuman: Hi\n\nAssistant: No."}), 2, "rejected",
     "prompt mismatch: the transcripts differ at turn 2 before their final Assistant turn "
     "(chosen has 2 prompt turns, rejected 1)"),
    ("h.jsonl", jsonl(HH, {**HH, "chosen": "\n\nHuman: Hi\n\nAssistant: "}), 2, "chosen", "empty response: ''"),
    ("h.jsonl", jsonl(HH, {**HH, "chosen": "just text"}), 2, "chosen",
     'not an HH transcript: no "\\n\\nHuman:" or "\\n\\nAssistant:" turns'),
    ("h.jsonl", jsonl(HH, {**HH, "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: ?"}), 2, "rejected",
     "not an HH transcript: the last turn is Human, expected Assistant"),
    ("h.jsonl", jsonl(HH, {**HH, "chosen": "Preamble\n\nHuman: Hi\n\nAssistant: Yo"}), 2, "chosen",
     "not an HH transcript: text before the first turn: 'Preamble'"),
    # sharegpt
    ("s.jsonl", jsonl(SG, {**SG, "conversations": [SG["conversations"][0], {"from": "observation", "value": "{}"}]}),
     2, "conversations[1].from", "bad message role: 'observation' (expected one of human, gpt, system)"),
    ("s.jsonl", jsonl(SG, {**SG, "chosen": {"from": "human", "value": "x"}}), 2, "chosen.from",
     "bad message role: 'human' (expected one of gpt)"),
    ("s.jsonl", jsonl(SG, {**SG, "chosen": "Hello!"}), 2, "chosen",
     'wrong type: expected a {from, value} object, got string "Hello!"'),
    ("s.jsonl", jsonl(SG, {**SG, "conversations": [{"from": "human"}]}), 2, "conversations[0]",
     "bad message: missing value (keys: ['from'])"),
    ("s.jsonl", jsonl(SG, {**SG, "rejected": {"from": "gpt", "value": 3}}), 2, "rejected.value",
     "wrong type: expected a string, got int 3"),
    # reading and ids
    ("d.jsonl", jsonl(OK, '{"prompt": "Hi", "chosen": }'), 2, None, "invalid JSON: Expecting value at column 28"),
    # a line cut off mid-row: the column where it stops, not column 1 of the line break
    ("d.jsonl", jsonl(OK, '{"prompt": "Hi", "chosen": "b"'), 2, None, "invalid JSON: Expecting ',' delimiter at column 31"),
    ("d.jsonl", jsonl(OK, '{"prompt": "Hi", "chosen": "Hel'), 2, None,
     "invalid JSON: unterminated string at column 32 (the line ends inside the string opened at column 28)"),
    ("d.jsonl", jsonl(OK, '{"prompt": "Hi", "chosen": "Hel\r'), 2, None,
     "invalid JSON: unterminated string at column 32 (the line ends inside the string opened at column 28)"),
    ("d.jsonl", jsonl(OK, OK | {"id": "x"}, b'{"prompt": "caf\xe9"}'), 3, None, "not UTF-8: byte 0xe9 at column 16"),
    ("d.jsonl", jsonl(OK, [OK]), 2, None, "wrong type: expected an object, got list"),
    ("d.jsonl", jsonl(OK | {"id": "a"}, OK | {"id": "b"}, {**OK, "id": "a"}), 3, "id",
     "duplicate id: 'a' (first at row 1)"),
    ("d.jsonl", jsonl(OK, {**OK, "id": [1]}), 2, "id", "wrong type: expected a string or an int, got list"),
    ("d.jsonl", jsonl(OK, {**OK, "id": " "}), 2, "id", "empty id: ' '"),
    ("d.csv", b"prompt,chosen,rejected\nHi,Hello!,Go away.\nHi,a,b,c\n", 2, None,
     "wrong shape: 1 more cells than the header's 3 columns"),
    ("d.csv", b"prompt,chosen,rejected\nHi,Hello!,Go away.\nHi,a\n", 2, "rejected", "missing field"),
    ("d.json", json.dumps([OK, 7]).encode(), 2, None, "wrong type: expected an object, got int 7"),
    ("d.parquet", parquet(OK, {**OK, "chosen": None}), 2, "chosen", "wrong type: expected a string, got null"),
]


def _expected(path, row, field, reason):
    where = f'{path}: row {row}: ' + (f'field "{field}": ' if field else "")
    return where + reason


def _check(err: DataError, path, row, field, message):
    assert str(err) == message
    assert "\n" not in str(err)
    assert (err.file, err.row, err.field) == (str(path), row, field)


@pytest.mark.parametrize("name, content, row, field, reason", ROW_CASES,
                         ids=[f"{c[0]}-{c[4].split(':')[0]}-{i}" for i, c in enumerate(ROW_CASES)])
def test_bad_row_raises(tmp_path, name, content, row, field, reason):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    _check(info.value, path, row, field, _expected(path, row, field, reason))


@pytest.mark.parametrize("name, content, row, field, reason", ROW_CASES,
                         ids=[f"{c[0]}-{c[4].split(':')[0]}-{i}" for i, c in enumerate(ROW_CASES)])
def test_bad_row_skipped(tmp_path, name, content, row, field, reason):
    path = write(tmp_path / name, content)
    pairs = load_pairs(path, on_bad_row="skip")
    assert len(pairs.skipped) == 1
    _check(pairs.skipped[0], path, row, field, _expected(path, row, field, reason))
    assert len(pairs) >= 1 and all(p.id != f"{path.stem}:{row}" for p in pairs)


# (file name, content, expected message after "<path>: "; a trailing "…" means a prefix)
FILE_CASES = [
    ("missing.jsonl", None, "file not found"),
    ("d.txt", b"{}", "unknown extension: expected one of .jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv"),
    ("d.jsonl", b"\n  \n", "empty dataset: no rows"),
    ("d.csv", b"prompt,chosen,rejected\n", "empty dataset: no rows"),
    ("d.json", b"[]", "empty dataset: no rows"),
    ("d.jsonl.gz", b"not gzip", "unreadable file: Not a gzipped file…"),
    ("d.parquet", b"not parquet", "unreadable parquet: …"),
    ("d.json", b'[{"prompt": "a",\n "chosen": "b",\n ]', "invalid JSON: Expecting property name enclosed in double quotes at line 3 column 2"),
    ("d.json", b'[{"prompt": "a",\n "chosen": "\xff"}]', "not UTF-8: byte 0xff on line 2"),
    ("d.csv", b"prompt,chosen,rejected\nHi,a,b\nHi,\xff,b\n", "not UTF-8: byte 0xff on line 3"),
    ("d.jsonl", jsonl({"question": "q", "answer": 1}),
     "row 1: unknown format: columns seen: question (string), answer (int); expected one of: "
     "standard (prompt, chosen, rejected: strings); conversational (chosen, rejected (and prompt): message lists); "
     "hh (chosen, rejected: Human/Assistant transcripts); sharegpt (conversations, chosen, rejected: {from, value})"),
    ("d.jsonl", jsonl({"conversations": [], **OK}),
     "row 1: ambiguous format: columns conversations (list), prompt (string), chosen (string), rejected (string) "
     "match standard and sharegpt; choose one with format= / --format"),
    ("d.jsonl", jsonl({"chosen": "Hello!", "rejected": "Go away."}), f'row 1: field "prompt": {IMPLICIT_PROMPT}'),
]


@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
@pytest.mark.parametrize("name, content, expected", FILE_CASES,
                         ids=[f"{c[0]}-{c[2].split(':')[0]}" for c in FILE_CASES])
def test_file_level_errors_always_raise(tmp_path, name, content, expected, on_bad_row):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_pairs(path, on_bad_row=on_bad_row)
    message = str(info.value)
    assert "\n" not in message and info.value.file == str(path)
    if expected.endswith("…"):
        assert message.startswith(f"{path}: {expected[:-1]}")
    else:
        assert message == f"{path}: {expected}"


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(DataError, match=r": not a file \(a folder is read only where `datasets`' save_to_disk wrote it\)$"):
        load_pairs(tmp_path / "d.jsonl")


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl({**OK, "chosen": ""}, "{", {**OK, "chosen": " "}))
    with pytest.raises(DataError) as info:
        load_pairs(path, on_bad_row="skip")
    assert str(info.value) == (f"{path}: no valid rows: all 3 rows were skipped (2 empty response (chosen), "
                               "1 invalid JSON); first: row 1: empty response: ''")


def test_wrong_arguments(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl(OK))
    with pytest.raises(AnatomistError, match="unknown format 'trl'; expected auto or one of standard, "
                                             "conversational, hh, sharegpt"):
        load_pairs(path, format="trl")
    with pytest.raises(AnatomistError, match="on_bad_row must be 'error' or 'skip', got 'warn'"):
        load_pairs(path, on_bad_row="warn")
    with pytest.raises(AnatomistError, match="limit must be >= 1, got 0"):
        load_pairs(path, limit=0)
    with pytest.raises(DataError, match="unsupported source list: pass a path or a datasets.Dataset"):
        load_pairs([OK])
