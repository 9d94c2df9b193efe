"""What the stages of one loop run share: the config, the run folder's layout, and what is loaded
once (the model, the SAE, the pairs) — loaded only when a stage that runs needs it, so a rerun
whose stages are all done loads nothing."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from anatomist.errors import AnatomistError
from anatomist.loop.config import LoopConfig
from anatomist.loop.units import outputs_hash

DATA_RECORD = "data.json"    # data/: where the train pairs, held-out pairs, prompts and truth are
PLAN = "plan.json"           # predict/: the resolved shaping recipe and why (shape reads it)


class Ctx:
    def __init__(self, cfg: LoopConfig, *, config_path: str | Path = "", echo=print, progress: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.config_path = str(config_path)
        self.echo = echo
        self.progress = progress

    # -- layout -----------------------------------------------------------------------------------
    def folder(self, stage: str, unit: str = "") -> Path:
        return self.out / stage / unit if unit else self.out / stage

    def digest(self, stage: str, unit: str = "") -> str:
        """The result digest of a finished upstream unit (part of a downstream unit's inputs)."""
        return outputs_hash(self.folder(stage, unit))

    # -- loaded once ------------------------------------------------------------------------------
    @cached_property
    def device(self) -> str:
        if self.cfg.device != "auto":
            return self.cfg.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @cached_property
    def loaded(self):
        """(model on the run's device, in eval mode; tokenizer)."""
        from anatomist.models import load

        lm = load(self.cfg.model)
        return lm.model.to(self.device).eval(), lm.tokenizer

    @cached_property
    def sae_path(self) -> str:
        if self.cfg.sae != "default":
            return self.cfg.sae
        from anatomist.sae import default_sae

        return str(default_sae(self.cfg.model, model=self.loaded, progress=self.progress))

    @cached_property
    def sae(self):
        from anatomist.sae import load_sae

        return load_sae(self.sae_path).to(self.device)

    @cached_property
    def data(self) -> dict:
        path = self.folder("data") / DATA_RECORD
        if not path.is_file():
            raise AnatomistError(f"{path} is missing: run the loop's data stage first")
        return json.loads(path.read_text())

    @cached_property
    def pairs(self) -> list:
        """The train pairs, read as the data section says (organisms: their train.jsonl, strictly)."""
        from anatomist.data.cli import read_pairs

        d = self.cfg.data
        if d.source == "file":
            return list(read_pairs(self.data["train"], format=d.format, on_bad_row=d.on_bad_row, limit=d.limit))
        return list(read_pairs(self.data["train"]))

    @cached_property
    def heldout_pairs(self) -> list:
        """Held-out pairs for preference accuracy ([] when the data has none)."""
        from anatomist.data.cli import read_pairs

        path, limit = self.data.get("heldout_pairs"), self.cfg.eval.heldout_limit
        if not path:
            return []
        on_bad = self.cfg.data.on_bad_row if self.cfg.data.source == "file" else "error"
        return list(read_pairs(path, on_bad_row=on_bad, limit=limit))

    @cached_property
    def prompts(self) -> list:
        from anatomist.data.heldout import first_per_topic, read_prompts

        path = self.data.get("prompts")
        if not path:
            raise AnatomistError(f"{self.config_path}: data.prompts: evaluation needs held-out prompts (jsonl: id, "
                                 "topic, prompt); organisms write their own")
        prompts = read_prompts(path)
        n = self.cfg.eval.prompts_per_topic
        return first_per_topic(prompts, n) if n else prompts

    @cached_property
    def plan(self) -> dict:
        return json.loads((self.folder("predict") / PLAN).read_text())

    @property
    def pre_unit(self) -> tuple[str, str]:
        """Where the base model's eval lives: the base stage (before predict) when the first-order
        forecast reads it, else the eval stage's first unit."""
        return ("base", "") if self.cfg.predict.first_order else ("eval", "pre")

    @property
    def pre_dir(self) -> Path:
        return self.folder(*self.pre_unit)

    @property
    def audit_dir(self) -> Path:
        return self.folder("audit")

    @cached_property
    def scorer(self):
        """The audit's instrument (its model and SAE) that scores every generation's concepts."""
        from anatomist.audit.scorer import Scorer

        return Scorer.from_audit(self.audit_dir, loaded=self.loaded, sae=self.sae)

    def variants(self) -> list[str]:
        """The DPO runs: "shaped" when the plan shapes anything, "plain" when asked for as a baseline
        (or when nothing is shaped)."""
        shaped = not self.plan["recipe_is_plain"]
        return [*(["plain"] if self.cfg.shape.baseline or not shaped else []), *(["shaped"] if shaped else [])]
