"""anatomist.data: every format parsed into hand-checked records, every source type, the real
files in ../shared/data, statistics and the `data inspect` CLI. Bad inputs: test_data_bad_inputs.py."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from anatomist.data import PairSet, PreferencePair, dataset_hash, load_pairs
from anatomist.data.cli import app as data_app
from anatomist.data.formats import FormatError, detect_format
from anatomist.data.inspect import inspect_pairs, summarize
from anatomist.errors import DataError

HH_NAME = "hh-rlhf-harmless-base-test-dev.jsonl.gz"
LF_NAME = "llamafactory-dpo-en-demo.json"
REPO = Path(__file__).resolve().parents[1]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


STANDARD_ROWS = [
    {"prompt": "What is 2+2?", "chosen": " 4.", "rejected": " 5.", "score": 0.9},
    {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "Seven", "score": 0.4},
]
STANDARD_PAIRS = [
    PreferencePair("d:1", (user("What is 2+2?"),), " 4.", " 5.", {"score": 0.9}),
    PreferencePair("d:2", (user("Name a colour."),), "Blue", "Seven", {"score": 0.4}),
]


# --- formats ----------------------------------------------------------------------------------

def test_standard_jsonl(tmp_path):
    pairs = load_pairs(write_jsonl(tmp_path / "d.jsonl", STANDARD_ROWS))
    assert pairs.format == "standard" and pairs.source == str(tmp_path / "d.jsonl")
    assert pairs.pairs == STANDARD_PAIRS  # texts verbatim: TRL completions keep leading spaces
    assert pairs.skipped == []


def test_preference_pair_invariants():
    pair = PreferencePair("x", [user("a")], "b", "c")
    assert pair.prompt == (user("a"),) and isinstance(pair.prompt, tuple)
    for args, message in [(("x", (), "b", "c"), 'field "prompt": empty prompt: no messages'),
                          (("x", (user(" "),), "b", "c"), 'field "prompt": empty prompt: all messages are blank'),
                          (("x", (user("a"),), "b", None), 'field "rejected": wrong type: expected a string, got null'),
                          (("", (user("a"),), "b", "c"), "field \"id\": empty id: ''")]:
        with pytest.raises(DataError) as info:
            PreferencePair(*args)
        assert str(info.value) == message


def test_id_column_is_used_and_kept_out_of_extra(tmp_path):
    rows = [{"id": "q-7", **STANDARD_ROWS[0]}, {"id": 8, **STANDARD_ROWS[1]}]
    pairs = load_pairs(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [p.id for p in pairs] == ["q-7", "8"]
    assert pairs[0].extra == {"score": 0.9}


def test_conversational_explicit_prompt(tmp_path):
    row = {"prompt": [system("Be brief."), {"role": "user", "content": "Hi", "name": "ann"}],
           "chosen": [assistant("Hello!")], "rejected": [assistant("Go away.")], "source": "web"}
    pairs = load_pairs(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert pairs.format == "conversational"
    assert pairs[0] == PreferencePair(
        "c:1", (system("Be brief."), {"role": "user", "content": "Hi", "name": "ann"}),
        "Hello!", "Go away.", {"source": "web"})


def test_conversational_implicit_prompt_splits_at_common_prefix(tmp_path):
    shared = [user("Hi"), assistant("Hello! How can I help?"), user("Tell me a joke.")]
    row = {"chosen": [*shared, assistant("Why did the chicken...")],
           "rejected": [*shared, assistant("No.")]}
    pairs = load_pairs(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert pairs.format == "conversational"
    assert pairs[0] == PreferencePair("c:1", tuple(shared), "Why did the chicken...", "No.")


def test_hh_transcripts(tmp_path):
    prefix = ("\n\nHuman: How do I boil an egg?\n\nAssistant: In water.  Human: obviously."
              "\n\nHuman: How long?")
    row = {"chosen": prefix + "\n\nAssistant:  About 9 minutes.\n", "rejected": prefix + "\n\nAssistant: Forever."}
    pairs = load_pairs(write_jsonl(tmp_path / "h.jsonl", [row]))
    assert pairs.format == "hh"
    # "Human:" not after a blank line is text the annotator saw, not a turn boundary.
    assert pairs[0] == PreferencePair(
        "h:1", (user("How do I boil an egg?"), assistant("In water.  Human: obviously."), user("How long?")),
        "About 9 minutes.", "Forever.")


def test_hh_keeps_consecutive_assistant_turns(tmp_path):
    prefix = "\n\nHuman: hi\n\nAssistant: one\n\nAssistant: two\n\nHuman: and?"
    row = {"chosen": prefix + "\n\nAssistant: three", "rejected": prefix + "\n\nAssistant: four"}
    pair = load_pairs(write_jsonl(tmp_path / "h.jsonl", [row]))[0]
    assert pair.prompt == (user("hi"), assistant("one"), assistant("two"), user("and?"))


def test_sharegpt(tmp_path):
    row = {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}],
           "chosen": {"from": "gpt", "value": "Goodbye!"}, "rejected": {"from": "gpt", "value": "Whatever."},
           "lang": "en"}
    path = tmp_path / "s.json"
    path.write_text(json.dumps([row]), encoding="utf-8")
    pairs = load_pairs(path)
    assert pairs.format == "sharegpt"
    assert pairs[0] == PreferencePair(
        "s:1", (system("Be kind."), user("Hi"), assistant("Hello"), user("Bye")),
        "Goodbye!", "Whatever.", {"lang": "en"})


@pytest.mark.parametrize("row, name", [
    (STANDARD_ROWS[0], "standard"),
    ({"prompt": [user("a")], "chosen": [assistant("b")], "rejected": [assistant("c")]}, "conversational"),
    ({"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("c")]}, "conversational"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}, "hh"),
    ({"conversations": [], "chosen": {}, "rejected": {}}, "sharegpt"),
])
def test_detect_format(row, name):
    assert detect_format(row) == name


def test_explicit_format_overrides_detection(tmp_path):
    # Transcript-looking strings under a prompt are plain text to the standard format.
    row = {"prompt": "Q", "chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "x"}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    assert load_pairs(path, format="standard")[0].chosen == row["chosen"]
    with pytest.raises(DataError, match='field "chosen": wrong type: expected a list of messages'):
        load_pairs(path, format="conversational")


# --- sources ----------------------------------------------------------------------------------

def test_json_array_jsonl_in_json_and_gzip(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(STANDARD_ROWS, indent=2), encoding="utf-8")
    write_jsonl(tmp_path / "b.json", STANDARD_ROWS)
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in STANDARD_ROWS)
    for name, stem in [("a.json", "a"), ("b.json", "b"), ("c.jsonl.gz", "c")]:
        pairs = load_pairs(tmp_path / name)
        assert [p.id for p in pairs] == [f"{stem}:1", f"{stem}:2"]
        assert [(p.prompt, p.chosen, p.rejected, p.extra) for p in pairs] == \
               [(p.prompt, p.chosen, p.rejected, p.extra) for p in STANDARD_PAIRS]


def test_jsonl_row_is_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + json.dumps(STANDARD_ROWS[0]) + "\n\n" + json.dumps(STANDARD_ROWS[1]) + "\n")
    assert [p.id for p in load_pairs(path)] == ["d:2", "d:4"]


def test_parquet_keeps_nested_and_extra_columns(tmp_path):
    rows = [{"prompt": [user("Hi")], "chosen": [assistant("Hello")], "rejected": [assistant("Bye")],
             "meta": {"k": 1}, "tags": ["a", "b"]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    pairs = load_pairs(tmp_path / "d.parquet")
    assert pairs.format == "conversational"
    assert pairs[0] == PreferencePair("d:1", (user("Hi"),), "Hello", "Bye", {"meta": {"k": 1}, "tags": ["a", "b"]})


def test_csv_values_are_strings(tmp_path):
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["prompt", "chosen", "rejected", "score"])
        w.writeheader()
        w.writerows(STANDARD_ROWS)
    pairs = load_pairs(tmp_path / "d.csv")
    assert pairs.format == "standard"
    assert pairs[1] == PreferencePair("d:2", (user("Name a colour."),), "Blue", "Seven", {"score": "0.4"})


def test_hf_dataset_source():
    import datasets

    pairs = load_pairs(datasets.Dataset.from_list(STANDARD_ROWS))
    assert pairs.source == "datasets.Dataset(dataset)"
    assert [(p.id, p.chosen, p.extra) for p in pairs] == [("dataset:1", " 4.", {"score": 0.9}),
                                                         ("dataset:2", "Blue", {"score": 0.4})]
    with pytest.raises(DataError, match=r"a DatasetDict has several splits \(train\); pass one"):
        load_pairs(datasets.DatasetDict({"train": datasets.Dataset.from_list(STANDARD_ROWS)}))


def test_saved_dataset_folder_source(tmp_path):
    """A `save_to_disk` folder reads as its Dataset does, named by the folder; a saved DatasetDict
    asks for one split's folder; any other folder is refused."""
    import datasets

    datasets.Dataset.from_list(STANDARD_ROWS).save_to_disk(str(tmp_path / "hf"))
    pairs = load_pairs(tmp_path / "hf")
    assert pairs.source == str(tmp_path / "hf")
    assert [(p.id, p.chosen, p.extra) for p in pairs] == [("hf:1", " 4.", {"score": 0.9}), ("hf:2", "Blue", {"score": 0.4})]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(STANDARD_ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: a saved DatasetDict has several splits \(train\); pass one split's "
                                        r"folder, e.g. .*dd/train"):
        load_pairs(tmp_path / "dd")
    assert len(load_pairs(tmp_path / "dd" / "train")) == 2
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="plain: not a file"):
        load_pairs(tmp_path / "plain")


def test_limit_stops_reading(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in STANDARD_ROWS) + "{not json\n")
    assert len(load_pairs(path, limit=2)) == 2  # the bad third line is never read
    with pytest.raises(DataError, match="row 3: invalid JSON"):
        load_pairs(path)


def test_pairset_sequence_protocol(tmp_path):
    pairs = load_pairs(write_jsonl(tmp_path / "d.jsonl", STANDARD_ROWS))
    assert isinstance(pairs, PairSet) and len(pairs) == 2
    assert list(pairs) == pairs.pairs and pairs[-1] is pairs.pairs[1] and pairs[:1] == pairs.pairs[:1]


def test_dataset_hash_is_content_only(tmp_path):
    a = load_pairs(write_jsonl(tmp_path / "a.jsonl", STANDARD_ROWS))
    pq.write_table(pa.Table.from_pylist(STANDARD_ROWS), tmp_path / "b.parquet")
    b = load_pairs(tmp_path / "b.parquet")
    assert [p.id for p in a] != [p.id for p in b]
    assert dataset_hash(a) == dataset_hash(b)
    assert re.fullmatch(r"[0-9a-f]{64}", dataset_hash(a))
    changed = write_jsonl(tmp_path / "c.jsonl", [STANDARD_ROWS[0], {**STANDARD_ROWS[1], "chosen": "Red"}])
    assert dataset_hash(load_pairs(changed)) != dataset_hash(a)
    assert dataset_hash(a.pairs[::-1]) != dataset_hash(a)  # order is part of the data


# --- real files -------------------------------------------------------------------------------

def test_real_hh(shared_data, caplog):
    with pytest.raises(DataError, match=r'row 87: field "chosen": empty response'):
        load_pairs(shared_data / HH_NAME)
    with caplog.at_level(logging.WARNING, logger="anatomist.data.io"):
        pairs = load_pairs(shared_data / HH_NAME, on_bad_row="skip")
    assert (len(pairs), pairs.format) == (1495, "hh")
    # 4 rows whose chosen final turn is empty; 1 whose chosen transcript has an extra
    # Assistant turn glued to an inline "Human:", so the two prompts differ.
    assert [(e.row, e.field, e.reason.split(":")[0]) for e in pairs.skipped] == [
        (87, "chosen", "empty response"), (517, "chosen", "empty response"),
        (926, "chosen", "empty response"), (1104, "chosen", "empty response"),
        (1255, "rejected", "prompt mismatch")]
    assert [r.message for r in caplog.records] == [
        f"{shared_data / HH_NAME}: skipped 5 bad rows of 1500 (first: row 87, field chosen; "
        "4 empty response (chosen), 1 prompt mismatch (rejected))"]

    first = pairs[0]  # checked by hand against line 1 of the file
    assert first.id == "hh-rlhf-harmless-base-test-dev:1"
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert first.prompt[1]["content"] == "Are you looking for practical joke ideas?"
    assert first.prompt[2]["content"] == "yep"
    assert first.prompt[3]["content"].startswith("Ok, I’ll give you a couple examples, and then you can choose")
    assert first.prompt[3]["content"].endswith("while they are masturbating you will find a new place to watch.")
    assert first.prompt[4]["content"] == "okay some of these do not have anything to do with pens"
    assert first.chosen == ("No, sorry!  All of these involve a pen, the point is that you can get funny "
                            "results by doing pranks with pens.")
    assert first.rejected.startswith("There are lots of funny things you can do with pens, here’s one example")
    assert first.extra == {}

    # Every valid pair rebuilds its raw transcripts (up to whitespace at turn boundaries).
    raw = [json.loads(line) for line in gzip.open(shared_data / HH_NAME, "rt", encoding="utf-8")]
    norm = lambda s: " ".join(s.split())
    for p in pairs:
        turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in p.prompt)
        row = raw[int(p.id.rsplit(":", 1)[1]) - 1]
        assert norm(turns + "\n\nAssistant: " + p.chosen) == norm(row["chosen"])
        assert norm(turns + "\n\nAssistant: " + p.rejected) == norm(row["rejected"])


def test_real_llamafactory(shared_data):
    pairs = load_pairs(shared_data / LF_NAME)
    assert (len(pairs), pairs.format, pairs.skipped) == (300, "sharegpt", [])
    first = pairs[0]
    assert first.prompt == (user("Hi! I'd like to create a new language game simulating the first person "
                                 "perspective of a character named Angela."),)
    assert first.chosen.startswith("That sounds like a fun and engaging idea! Here are some tips")
    assert sum(p.prompt[0]["role"] == "system" for p in pairs) == 80
    assert all(p.prompt[-1]["role"] == "user" for p in pairs)


# --- inspect ----------------------------------------------------------------------------------

def test_inspect_pairs_hand_computed(tmp_path):
    rows = [STANDARD_ROWS[0], {"prompt": "", "chosen": "a", "rejected": "b"}, STANDARD_ROWS[1],
            {"prompt": "Say hi", "chosen": "hi", "rejected": "hello"}]
    stats = inspect_pairs(load_pairs(write_jsonl(tmp_path / "d.jsonl", rows), on_bad_row="skip"))
    assert stats["format"] == "standard"
    assert stats["counts"] == {"rows": 4, "valid": 3, "skipped": 1}
    assert stats["skipped_by_reason"] == {"empty prompt (prompt)": 1}
    assert stats["prompt_turns"] == {1: 3}
    assert stats["chars"]["chosen"]["min"] == 2 and stats["chars"]["chosen"]["max"] == 4  # " 4.", "Blue", "hi"
    assert stats["chosen_longer"] == pytest.approx(0.0) and stats["same_length"] == pytest.approx(1 / 3)
    assert stats["example_ids"] == ["d:1", "d:3", "d:4"]
    assert stats["validation"] == [f"{tmp_path / 'd.jsonl'}: row 2: field \"prompt\": empty prompt: ''"]
    json.dumps(stats)  # the CLI's --json path


def test_summarize_histogram():
    s = summarize([1, 2, 3, 10, 100, 1000], bins=3)
    assert s["histogram"] == {"edges": [1, 10, 100, 1001], "counts": [3, 1, 2]}  # log-spaced
    assert (s["min"], s["median"], s["max"]) == (1, 6.5, 1000)
    assert summarize([5, 5], bins=4)["histogram"] == {"edges": [5, 6], "counts": [2]}


class WordTokenizer:
    """One token per whitespace-separated word; optionally a chat template that adds 2 tokens."""

    def __init__(self, chat_template=None):
        self.chat_template = chat_template

    def __call__(self, texts, add_special_tokens=True):
        if isinstance(texts, str):
            return {"input_ids": list(range(len(texts.split())))}
        return {"input_ids": [list(range(len(t.split()))) for t in texts]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return " ".join(m["content"] for m in messages) + " <assistant> start"


@pytest.mark.parametrize("templated, prompt_tokens", [(False, [3, 2]), (True, [5, 4])])
def test_inspect_token_lengths(tmp_path, templated, prompt_tokens):
    rows = [{"prompt": "What is 2+2?", "chosen": "four it is", "rejected": "five"},
            {"prompt": "Name one.", "chosen": "Blue", "rejected": "no thanks"}]
    pairs = load_pairs(write_jsonl(tmp_path / "d.jsonl", rows))
    tokens = inspect_pairs(pairs, tokenizer=WordTokenizer("{{ x }}" if templated else None))["tokens"]
    assert tokens["prompt_template"] == ("chat" if templated else "plain")
    assert (tokens["prompt"]["min"], tokens["prompt"]["max"]) == (min(prompt_tokens), max(prompt_tokens))
    assert (tokens["chosen"]["min"], tokens["chosen"]["max"]) == (1, 3)
    assert (tokens["rejected"]["min"], tokens["rejected"]["max"]) == (1, 2)


# --- CLI --------------------------------------------------------------------------------------

def test_cli_inspect_real_hh(shared_data):
    result = CliRunner().invoke(data_app, ["inspect", str(shared_data / HH_NAME), "--on-bad-row", "skip"])
    assert result.exit_code == 0, result.output
    assert "format: hh" in result.output
    assert "valid: 1495" in result.output and "skipped: 5" in result.output
    assert "4  empty response (chosen)" in result.output

    result = CliRunner().invoke(data_app, ["inspect", str(shared_data / HH_NAME), "--format", "hh", "--limit", "5"])
    assert result.exit_code == 0 and "valid: 5" in result.output, result.output

    result = CliRunner().invoke(data_app, ["inspect", str(shared_data / LF_NAME), "--json", "--limit", "10"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"] == {"rows": 10, "valid": 10, "skipped": 0}


def test_cli_inspect_bad_file_raises_data_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same"}])
    result = CliRunner().invoke(data_app, ["inspect", str(path)])
    assert isinstance(result.exception, DataError)
    assert str(result.exception) == (f'{path}: row 1: field "rejected": identical chosen and rejected '
                                     "(--on-bad-row skip skips and counts such rows)")
    # Skipping cannot help a file whose format is unknown, so no hint there.
    path = write_jsonl(tmp_path / "unknown.jsonl", [{"question": "q", "answer": "a"}])
    result = CliRunner().invoke(data_app, ["inspect", str(path)])
    assert isinstance(result.exception, FormatError) and "--on-bad-row" not in str(result.exception)


def test_cli_help_has_example():
    result = CliRunner().invoke(data_app, ["inspect", "--help"])
    assert result.exit_code == 0 and "anatomist data inspect" in result.output


def _anatomist(*args):
    return subprocess.run([sys.executable, "-m", "anatomist.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_subprocess(shared_data, tmp_path):
    ok = _anatomist("data", "inspect", str(shared_data / HH_NAME), "--on-bad-row", "skip")
    assert ok.returncode == 0, ok.stderr
    assert "format: hh" in ok.stdout

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": 3, "rejected": "r"}])
    result = _anatomist("data", "inspect", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f'{bad}: row 1: field "chosen": wrong type: expected a string, got int 3' in result.stderr
