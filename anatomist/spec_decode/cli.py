"""`anatomist mtp train|analyze` and `anatomist generate`: thin wrappers over anatomist.spec_decode."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from anatomist.errors import AnatomistError
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.options import default
from anatomist.spec_decode.analyze import collect
from anatomist.spec_decode.generate import generate as spec_generate
from anatomist.spec_decode.pipeline import cached_samples
from anatomist.spec_decode.train import TrainConfig

app = typer.Typer(help="MTP draft heads: train on the model's own samples, analyse acceptance vs entropy.",
                  no_args_is_help=True)

MODEL_HELP = "HF id, local folder, .gguf file or alias (default: the offline SmolLM2-135M-Instruct)."


def _load(model: str):
    from anatomist.models import load

    return load(model)


@app.command("train")
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the head (safetensors + config.json) and checkpoints."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    loss: str = typer.Option(default(TrainConfig, "loss"), help="ce | kl | tv | e2e_tv (Bebop Eq. 10 / 13)."),
    gamma: int = typer.Option(default(TrainConfig, "gamma"), help="Draft depth γ (tokens drafted per round)."),
    steps: int = typer.Option(default(TrainConfig, "steps"), help="Optimizer steps."),
    batch_size: int = typer.Option(default(TrainConfig, "batch_size"), help="Sequences per step."),
    lr: float = typer.Option(default(TrainConfig, "lr"), help="Peak learning rate (AdamW, warmup + cosine)."),
    draft_vocab: int = typer.Option(default(TrainConfig, "draft_vocab"),
                                    help="Draft vocabulary: the N most frequent tokens (0 = full)."),
    prompts: int = typer.Option(default(cached_samples, "n_prompts"), help="Training prompts to self-sample."),
    prompt_set: str = typer.Option(default(cached_samples, "prompt_set"),
                                   help="chat (user prompts from ../shared/data) or grpo (the GRPO task's "
                                   "problems: for a head that drafts RL rollouts)."),
    temperature: float = typer.Option(default(cached_samples, "temperature"),
                                      help="Sampling temperature of the self-generated data."),
    max_new_tokens: int = typer.Option(default(cached_samples, "max_new_tokens"),
                                       help="Response length of the self-generated data."),
    seed: int = typer.Option(default(TrainConfig, "seed"), help="Seed for sampling and batch order."),
    head: str = typer.Option(default(TrainConfig, "head"), "--head",
                             help="Head kind: mtp (DeepSeek-V3-style) | eagle3 (EAGLE-3, servable by vLLM/SGLang "
                             "for Llama trunks via `mtp export --format eagle3`)."),
) -> None:
    """Train an MTP draft head (trunk frozen); rerunning the same command resumes.

    Example: anatomist mtp train --out runs/head --loss tv --steps 200 --head eagle3
    """
    from anatomist.spec_decode.pipeline import cached_states
    from anatomist.spec_decode.train import train_head

    cfg = TrainConfig(loss=loss, gamma=gamma, steps=steps, batch_size=batch_size, lr=lr,
                      draft_vocab=draft_vocab, seed=seed, head=head)
    lm = _load(model)
    samples = cached_samples(lm.model, lm.tokenizer, model_name=model, n_prompts=prompts,
                             temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, prompt_set=prompt_set)
    # cached states hold the final h only: what an MTP head reads; other kinds pack more layers
    states, stats = cached_states(lm.model, samples, model_name=model) if head == "mtp" else (None, None)
    trained = train_head(lm.model, samples, cfg, out, states=states, stats=stats, base_model=model,
                      eos_token_id=lm.tokenizer.eos_token_id, extra={"data_temperature": temperature})
    last = trained.history[-1] if trained.history else {}
    typer.echo(json.dumps({k: round(v, 4) for k, v in last.items() if k.startswith("mtp/")}))
    typer.echo(f"wrote {out}")


@app.command("analyze")
def analyze(
    heads: list[Path] = typer.Argument(..., help="Head folders to compare (e.g. a CE head and a TV head)."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    temperatures: str = typer.Option(",".join(map(str, default(collect, "temperatures"))),
                                     help="Comma-separated sampling temperatures."),
    modes: str = typer.Option(",".join(default(collect, "modes")),
                              help="Drafting modes: rs (rejection sampling), greedy (one-hot q)."),
    prompts: int = typer.Option(16, help="Held-out prompts (eval split)."),
    max_new_tokens: int = typer.Option(default(collect, "max_new_tokens"), help="Tokens generated per prompt."),
    out: Path = typer.Option(Path("acceptance_vs_entropy.html"), "--out", "-o", help="HTML report."),
    seed: int = typer.Option(default(collect, "seed")),
) -> None:
    """Acceptance vs target entropy per head and drafting mode; slopes with 95% CIs and an HTML plot.

    Example: anatomist mtp analyze runs/head --out runs/head/acceptance_vs_entropy.html
    """
    from anatomist.spec_decode.analyze import render_html, slopes
    from anatomist.spec_decode.heads import load_any_head as load_head
    from anatomist.spec_decode.prompts import chat_prompts

    try:
        temps = [float(t) for t in temperatures.split(",") if t.strip()]
    except ValueError as e:
        raise AnatomistError(f"--temperatures: {temperatures!r} is not a comma-separated list of numbers") from e
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    if not set(mode_list) <= {"rs", "greedy"}:
        raise AnatomistError(f"--modes: {modes!r}; use rs and/or greedy")
    lm = _load(model)
    loaded = {}
    for folder in heads:
        h = load_head(folder, lm.model)
        loaded[f"{h.config.loss or folder.name}:{folder.name}"] = h
    ps = chat_prompts(lm.tokenizer, "eval", prompts)
    recs = collect(lm.model, loaded, ps, temperatures=temps, modes=mode_list, max_new_tokens=max_new_tokens,
                   eos_token_id=lm.tokenizer.eos_token_id, seed=seed)
    for (head, mode), info in slopes(recs).items():
        f = info["fit"]
        typer.echo(f"{head:40s} {mode:6s} slope {f.slope:+.4f} /nat  95% CI [{f.slope_ci[0]:+.4f}, "
                   f"{f.slope_ci[1]:+.4f}]  acceptance {info['acceptance']:.3f}  n={f.n}")
    from anatomist.fileio import atomic_write_text

    atomic_write_text(out, render_html(recs))
    typer.echo(f"wrote {out}")


@app.command("export")
def export(
    head: Path = typer.Argument(..., help="Head folder from `anatomist mtp train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for config.json + model.safetensors + README.md."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    verifier: str = typer.Option("", help="Verifier id/path the engine will load (default: --model)."),
    dtype: str = typer.Option("", help="Cast weights: bfloat16 | float16 | float32 (default: as trained)."),
    fmt: str = typer.Option("mtp", "--format", help="speculators format: mtp (an MTP head) | eagle3 (a head "
                            "trained with --head eagle3; vLLM and SGLang serve it for Llama trunks)."),
) -> None:
    """Write the head as a speculators draft ("mtp" or "eagle3") for vLLM / SGLang.

    Example: anatomist mtp export runs/head --out runs/head-speculators --verifier HuggingFaceTB/SmolLM2-135M-Instruct
    """
    import torch

    from anatomist.spec_decode.export_eagle3 import EXPORT_FORMATS
    from anatomist.spec_decode.heads import load_any_head

    casts = {"": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in casts:
        raise AnatomistError(f"--dtype must be bfloat16, float16 or float32, got {dtype!r}")
    if fmt not in EXPORT_FORMATS:
        raise AnatomistError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    lm = _load(model)
    folder = EXPORT_FORMATS[fmt](load_any_head(head, lm.model), lm.model, out, verifier=verifier or model,
                                 dtype=casts[dtype])
    typer.echo(f"wrote {folder} (serving commands in {folder / 'README.md'})")


def generate(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="User message (repeat for a batch)."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    spec: str = typer.Option("none", help="Drafter: none (plain sampling), mtp (needs --head), ngram."),
    head: Path = typer.Option(None, help="MTP head folder (from `anatomist mtp train`)."),
    gamma: int = typer.Option(default(spec_generate, "gamma"), help="Draft tokens per round."),
    draft_mode: str = typer.Option(default(spec_generate, "draft_mode"),
                                   help="rs: sample drafts and verify with q; greedy: one-hot drafts."),
    temperature: float = typer.Option(default(spec_generate, "temperature"), help="0 = greedy decoding."),
    top_k: int = typer.Option(default(spec_generate, "top_k"), help="0 = off."),
    top_p: float = typer.Option(default(spec_generate, "top_p"), help="1 = off."),
    max_new_tokens: int = typer.Option(128),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print tokens, log-probs and acceptance stats as JSON."),
) -> None:
    """Generate with plain or speculative decoding (same output distribution either way).

    Example: anatomist generate -p "Explain photosynthesis in one sentence." --spec mtp --head runs/head
    """
    import time

    import torch

    from anatomist.models.chat import apply_chat_template
    from anatomist.spec_decode.drafters import make_drafter
    from anatomist.spec_decode.heads import load_any_head as load_head

    if spec not in ("none", "mtp", "ngram"):
        raise AnatomistError(f"--spec must be none, mtp or ngram, got {spec!r}")
    if spec == "mtp" and head is None:
        raise AnatomistError("--spec mtp needs --head DIR (train one with `anatomist mtp train`)")
    for ok, what in ((temperature >= 0, f"--temperature must be >= 0, got {temperature}"),
                     (top_k >= 0, f"--top-k must be >= 0 (0: off), got {top_k}"),
                     (0 < top_p <= 1, f"--top-p must be in (0, 1], got {top_p}"),
                     (gamma >= 1, f"--gamma must be >= 1, got {gamma}"),
                     (draft_mode in ("rs", "greedy"), f"--draft-mode must be rs or greedy, got {draft_mode!r}"),
                     (max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {max_new_tokens}")):
        if not ok:
            raise AnatomistError(what)
    lm = _load(model)
    drafter = None
    if spec == "mtp":
        drafter = make_drafter("mtp", head=load_head(head, lm.model))
    elif spec == "ngram":
        drafter = make_drafter("ngram")
    ids = [apply_chat_template(lm.tokenizer, [{"role": "user", "content": p}]) for p in prompt]
    t0 = time.perf_counter()
    out = spec_generate(lm.model, ids, drafter=drafter, gamma=gamma, temperature=temperature, top_k=top_k,
                        top_p=top_p, max_new_tokens=max_new_tokens, eos_token_id=lm.tokenizer.eos_token_id,
                        draft_mode=draft_mode, generator=torch.Generator().manual_seed(seed))
    dt = time.perf_counter() - t0
    n = sum(len(t) for t in out.tokens)
    metrics = {**out.stats.as_metrics(), "spec/tokens_per_s": n / dt}
    if as_json:
        typer.echo(json.dumps({"tokens": out.tokens, "logprobs": [lp.tolist() for lp in out.logprobs],
                               "text": [lm.tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens],
                               "stats": metrics}))
        return
    for p, t in zip(prompt, out.tokens):
        typer.echo(f"> {p}\n{lm.tokenizer.decode(t, skip_special_tokens=True)}\n")
    typer.echo(" ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
