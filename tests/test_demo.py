"""The demo's own folder logic (the demo itself runs on the real model: `make demo`)."""

from __future__ import annotations

import json

from anatomist.capture.run import items_from_pairs, items_hash
from anatomist.data import load_pairs


def _pairs(tmp_path, n):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(n)))
    return list(load_pairs(f))


def test_audit_of_other_data_is_moved_aside_and_the_same_data_resumes(tmp_path):
    from anatomist.demo import _audit_dir

    pairs = _pairs(tmp_path, 4)
    latents = tmp_path / "run" / "audit" / "latents"
    latents.mkdir(parents=True)
    (latents / "capture.json").write_text(json.dumps({"items_hash": items_hash(items_from_pairs(pairs))}))
    assert _audit_dir(tmp_path / "run", pairs) == tmp_path / "run" / "audit" and latents.is_dir()   # resumes
    other = _pairs(tmp_path, 3)
    old = items_hash(items_from_pairs(pairs))
    assert _audit_dir(tmp_path / "run", other) == tmp_path / "run" / "audit"
    assert not (tmp_path / "run" / "audit").exists()
    assert (tmp_path / "run" / f"audit-{old[:12]}" / "latents" / "capture.json").is_file()
