"""The recipe of `anatomist loop`: one YAML file, every field a dataclass field with its default.

    cfg = read_config("examples/organism-shaped.yaml")    # LoopConfig; bad keys/types raise one line

Sections (each a dataclass below; a section left out keeps its defaults):
    model, sae, device, out    what runs where
    data                       `DataConfig`: a preference file, or an organism built into the run folder
    audit                      `anatomist.audit.run.AuditConfig` (the fields `anatomist audit` sets)
    predict                    `PredictSection`
    shape                      `ShapeConfig`: λ per concept (or per flagged concept), token filter, inoculation
    train                      `anatomist.train.dpo.DPOConfig` (the fields `anatomist dpo` sets)
    eval                       `EvalConfig`: held-out prompts, samples, preference accuracy

The audit and DPO sections reuse the stages' own config dataclasses, so their defaults and
meanings live in one place (audit/run.py, train/dpo.py). Relative paths are read from the
current folder (run from the repository root, as every example in README does).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from anatomist.audit.run import AuditConfig
from anatomist.errors import AnatomistError
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.train.dpo import DPOConfig

DATA_SOURCES = ("file", "organism", "organism-hh")


@dataclass(frozen=True)
class DataConfig:
    # where the pairs come from: "file" reads `path`; "organism" builds the planted-confound organism
    # (the model's own answers, traits planted by labelling) into the run folder; "organism-hh" plants
    # traits into the real HH-RLHF pairs of `path` (default ../shared/data's harmless-base dev file)
    source: str = "organism"
    path: str | None = None              # file: the preference file; organism-hh: the HH-RLHF file
    format: str = "auto"                 # file: its format (auto-detected), as `anatomist data inspect` reads it
    on_bad_row: str = "error"            # file: "error" stops at the first malformed row, "skip" counts it
    limit: int | None = None             # file: only the first N pairs; organism-hh: N planted pairs (default 300)
    topic_column: str | None = None      # file: audit topics from this column (organisms always use "topic")
    heldout_pairs: str | None = None     # file: held-out pairs ranked for preference accuracy (none: not measured)
    prompts: str | None = None           # file: held-out prompts (jsonl: id, topic, prompt); topics = audit topics
    per_topic: int = 80                  # organism: distinct prompts per topic (¾ become train pairs)
    heldout: int = 200                   # organism-hh: the next N conversations, held out
    max_new_tokens: int = 96             # organisms: length of the sampled responses
    seed: int = 0                        # organisms: the sampling and planting seed

    def __post_init__(self):
        if self.source not in DATA_SOURCES:
            raise AnatomistError(f"data.source must be one of {', '.join(DATA_SOURCES)}, got {self.source!r}")
        if self.source == "file" and not self.path:
            raise AnatomistError("data.path: a preference file is needed when data.source is 'file'")
        if self.on_bad_row not in ("error", "skip"):
            raise AnatomistError(f"data.on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")


@dataclass(frozen=True)
class PredictSection:
    spread: str = "pairs"                # s² of a concept per topic: "pairs" (the dataset's responses) or "none"
    top: int = 15                        # rows of predicted shifts printed (and shown in the report)
    # also the first-order forecast (evaluate/forecast.py): each run's DPO direction at the reference
    # (train section's blocks and β, the plan's λ) applied to the base model's own generations on the
    # held-out prompts (the base eval then runs before predict). Costs about one DPO epoch per run;
    # verify scores it on the base samples it did not read (needs eval.samples >= 4)
    first_order: bool = False
    grad_share: float = 1.0              # share of the pairs in the forecast's gradient pass (seeded; 1 = all)


@dataclass(frozen=True)
class TokenFilterSection:
    concepts: list[str] = field(default_factory=list)   # concepts (as in `lam`) whose tokens are filtered
    tau: float = 1.0                     # drop response tokens with per-token score c_t >= tau
    sides: str = "both"                  # chosen | rejected | both


@dataclass(frozen=True)
class InoculateSection:
    concept: str = ""                    # the concept (as in `lam`) whose pairs get the inoculation prompt
    text: str | None = None              # the system prompt (default: built from the concept's label)
    min_delta: float = 0.0               # only pairs whose Δc is above this


@dataclass(frozen=True)
class ShapeConfig:
    # {concept: λ}; λ < 0 suppresses, λ > 0 amplifies (L = −log σ(β·Δθ − λ·Δc)). A concept is a
    # cluster id, a label (or unique part of one), "length", "flagged" (every concept with a flagged
    # audit row, any topic) or "flagged:DETECTOR" (those of them that track a screen detector, e.g.
    # flagged:over_formatting)
    lam: dict[str, float] = field(default_factory=dict)
    token_filter: TokenFilterSection | None = None      # drop tokens of a concept from both models' log-probs
    inoculate: InoculateSection | None = None           # a system prompt asking for the concept, at training only
    drop_extreme: float | None = None    # drop this share of pairs with the largest |Δc| over the shaped concepts
    baseline: bool = True                # also train plain DPO on the same pairs, to compare against


@dataclass(frozen=True)
class EvalConfig:
    prompts_per_topic: int | None = None  # the first N held-out prompts of each topic (None: all)
    samples: int = 4                     # generations per prompt, the same seeds for the base and every policy
    max_new_tokens: int = 96             # generation length
    temperature: float = 0.7             # sampling temperature
    batch_size: int = 32                 # sampling batch (part of the generation cache key)
    heldout_limit: int | None = 200      # held-out pairs ranked for preference accuracy (None: all)
    n_boot: int = 1000                   # bootstrap resamples of the CIs (eval and verify)
    seed: int = 0                        # sampling seed


@dataclass(frozen=True)
class LoopConfig:
    model: str = DEFAULT_MODEL           # HF id, local folder, .gguf file or alias (offline default)
    sae: str = "default"                 # SAE folder (SAELens format) or "default" (trained once, cached)
    device: str = "cpu"                  # where DPO and sampling run: "cpu", "cuda" or "auto"
    out: str | None = None               # the run folder (default runs/loop/<config file's stem>)
    data: DataConfig = field(default_factory=DataConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    predict: PredictSection = field(default_factory=PredictSection)
    shape: ShapeConfig = field(default_factory=ShapeConfig)
    train: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.predict.first_order and self.eval.samples < 4:
            raise AnatomistError(f"predict.first_order needs eval.samples >= 4 (two halves of >= 2 samples per "
                                 f"prompt: the forecast's and verify's), got {self.eval.samples}")
        if not 0 < self.predict.grad_share <= 1:
            raise AnatomistError(f"predict.grad_share must be in (0, 1], got {self.predict.grad_share}")


# -- reading ---------------------------------------------------------------------------------------

def read_config(path: str | Path, *, out: str | Path | None = None) -> LoopConfig:
    """Read and check a recipe; `out` (the CLI's --out) overrides its `out`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise AnatomistError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise AnatomistError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    cfg = build(LoopConfig, raw, str(path), "")
    out = out if out is not None else cfg.out
    return dataclasses.replace(cfg, out=str(out if out is not None else Path("runs") / "loop" / path.stem))


def build(cls, raw, file: str, where: str):
    """`cls(**raw)` with every key checked against cls's fields and every value against its type."""
    if not isinstance(raw, dict):
        raise AnatomistError(f"{file}: {where or 'the top level'} must be a mapping of fields, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise AnatomistError(f"{file}: unknown field {name!r} (known: {', '.join(sorted(names))})")
        kwargs[key] = convert(hints[key], value, file, name)
    try:
        return cls(**kwargs)
    except AnatomistError as e:
        raise AnatomistError(f"{file}: {where + ': ' if where else ''}{e}") from None


def convert(tp, value, file: str, name: str):
    """`value` as type `tp` (scalars, Optional, list/tuple/dict of them, nested dataclasses)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and (dataclasses.is_dataclass(others[0]) or typing.get_origin(others[0])):
            return convert(others[0], value, file, name)   # a section or a list: its own error names the inner field
        for arg in others:
            try:
                return convert(arg, value, file, name)
            except AnatomistError:
                continue
        raise _bad(file, name, tp, value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, file, name)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _bad(file, name, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _bad(file, name, tp, value)
            return tuple(convert(a, v, file, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else typing.Any
        out = [convert(item, v, file, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(file, name, tp, value)
        kt, vt = args or (typing.Any, typing.Any)
        return {convert(kt, k, file, f"{name}.{k}"): convert(vt, v, file, f"{name}.{k}") for k, v in value.items()}
    if tp is typing.Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(file, name, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad(file, name, tp, value)
    if tp is float:
        # a string too: YAML 1.1 reads 5e-5 (no dot) as one
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _bad(file, name, tp, value)
        try:
            return float(value)
        except ValueError:
            raise _bad(file, name, tp, value) from None
    if tp is str:
        # a YAML key such as `3:` (a cluster id) arrives as an int: concepts are named by strings
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return str(value)
        raise _bad(file, name, tp, value)
    raise AssertionError(f"config field {name}: unsupported type {tp!r}")


def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def type_name(tp) -> str:
    """A type as a YAML writer reads it: int, float or null, list of str, a mapping of fields."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "a mapping of fields"
    if origin in (list, tuple):
        n = f"{len(args)} " if origin is tuple and args and args[-1] is not Ellipsis else ""
        return f"a list of {n}{type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return f"a mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "a mapping"
    return getattr(tp, "__name__", str(tp))


def _bad(file: str, name: str, tp, value) -> AnatomistError:
    return AnatomistError(f"{file}: field {name!r} must be {type_name(tp)}, got {_kind(value)}")


def section(cfg, name: str) -> dict:
    """One section of the config as plain JSON-able data (what a stage's input hash reads)."""
    value = getattr(cfg, name)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
