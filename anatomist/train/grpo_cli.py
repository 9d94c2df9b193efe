"""`anatomist grpo`: GRPO on verifiable arithmetic / unit-conversion problems, with plain or MTP+RS rollouts."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from anatomist.errors import AnatomistError
from anatomist.monitor import cli as mon
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.options import default
from anatomist.train.grpo import GRPOConfig

GRPO_HEAD_PROMPTS = 512  # task problems the default draft head is trained on (self-sampled once, cached)
MODEL_HELP = "HF id, local folder, .gguf file or alias (default: the offline SmolLM2-135M-Instruct)."


def grpo(
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoint, metrics.jsonl, plot.html."),
    model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    spec: str = typer.Option("mtp", help="Rollout drafter: mtp (needs --head) or none (plain sampling)."),
    head: Path = typer.Option(None, help="MTP head folder (`anatomist mtp train --loss e2e_tv --prompt-set grpo`); "
                              "default: the cached e2e-TV head trained on the model's own answers to this task's "
                              "problems, trained once before RL if missing (minutes)."),
    steps: int = typer.Option(default(GRPOConfig, "steps"), help="GRPO steps."),
    prompts_per_step: int = typer.Option(default(GRPOConfig, "prompts_per_step"), "--prompts",
                                         help="Problems per step (P)."),
    group_size: int = typer.Option(default(GRPOConfig, "group_size"), "--group", help="Samples per problem (G)."),
    max_new_tokens: int = typer.Option(default(GRPOConfig, "max_new_tokens")),
    temperature: float = typer.Option(default(GRPOConfig, "temperature"),
                                      help="Rollout temperature (log-probs are of the sampled, tempered policy)."),
    gamma: int = typer.Option(default(GRPOConfig, "gamma"), help="Draft tokens per round."),
    lr: float = typer.Option(default(GRPOConfig, "lr")),
    clip_eps: float = typer.Option(default(GRPOConfig, "clip_eps"), help="PPO clip ε."),
    kl_coef: float = typer.Option(default(GRPOConfig, "kl_coef"),
                                  help="β of the k3 KL to the initial policy (0 = none)."),
    epochs: int = typer.Option(default(GRPOConfig, "epochs"), help="Optimiser passes per rollout batch."),
    micro_batch: int = typer.Option(default(GRPOConfig, "micro_batch"), help="Sequences per forward/backward."),
    train_layers: int = typer.Option(default(GRPOConfig, "train_layers"),
                                     help="Train only the top N blocks + final norm (0 = all)."),
    refresh_head_every: int = typer.Option(default(GRPOConfig, "refresh_head_every"),
                                           help="Fine-tune the draft head on fresh rollouts every N steps "
                                                "(0 = never)."),
    kinds: str = typer.Option(",".join(default(GRPOConfig, "kinds")),
                              help="Problem kinds: plain, add, sub, mul, convert."),
    max_operand: int = typer.Option(default(GRPOConfig, "max_operand"), help="Largest operand (difficulty)."),
    seed: int = typer.Option(default(GRPOConfig, "seed")),
    device: str = typer.Option("cpu"),
    monitor: Path = mon.AUDIT, monitor_every: int = mon.EVERY, monitor_budget: float = mon.BUDGET,
    monitor_prompts: Path = mon.PROMPTS,
    monitor_per_topic: int = mon.PER_TOPIC, monitor_samples: int | None = mon.SAMPLES,
    monitor_estimator: str = mon.ESTIMATOR,
    monitor_max_new_tokens: int = mon.TOKENS, monitor_concept: list[str] = mon.CONCEPTS,
    monitor_detector: list[str] = mon.DETECTORS, alarm: list[str] = mon.ALARMS, stop_on_alarm: bool = mon.STOP,
) -> None:
    """Run (or resume: rerun the same command) GRPO with speculative rollouts; prints the last step's metrics.

    Example: anatomist grpo --out runs/grpo --head runs/head --steps 20 --prompts 4 --group 4

    Monitored (the screen's detectors on held-out task problems): anatomist grpo --out runs/grpo --spec none --monitor-every 5 --alarm length>20
    """
    from anatomist.models import load
    from anatomist.spec_decode.drafters import make_drafter
    from anatomist.spec_decode.head import load_head
    from anatomist.train.grpo import train_grpo

    if spec not in ("mtp", "none"):
        raise AnatomistError(f"--spec must be mtp or none, got {spec!r}")
    cfg = GRPOConfig(steps=steps, prompts_per_step=prompts_per_step, group_size=group_size,
                     max_new_tokens=max_new_tokens, temperature=temperature, gamma=gamma, lr=lr, clip_eps=clip_eps,
                     kl_coef=kl_coef, epochs=epochs,
                     micro_batch=micro_batch, train_layers=train_layers, refresh_head_every=refresh_head_every,
                     kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), max_operand=max_operand, seed=seed)
    def prompts():
        from anatomist.audit.folder import AuditFolder

        if monitor_prompts is not None or monitor is not None and AuditFolder(monitor).data_file is not None:
            return monitor_prompts or mon.default_prompts(AuditFolder(monitor).data_file)
        return heldout_problems(cfg)

    watch = mon.build(monitor, monitor_every, prompts, monitor_per_topic, monitor_samples, monitor_max_new_tokens,
                      monitor_concept, monitor_detector, alarm, stop_on_alarm, seed=seed,
                      budget=monitor_budget, estimator=monitor_estimator)
    lm = load(model, device=device)
    drafter = None
    if spec == "mtp":
        if head is None:
            from anatomist.spec_decode.pipeline import e2e_tv_head

            mtp = e2e_tv_head(lm, model_name=model, prompt_set="grpo", n_prompts=GRPO_HEAD_PROMPTS)[0]  # prints its folder
        else:
            mtp = load_head(head, lm.model)
        drafter = make_drafter("mtp", head=mtp.to(device))
    res = train_grpo(lm.model, lm.tokenizer, cfg, out, drafter=drafter, monitor=watch)
    if res.stopped_at is not None:
        typer.echo(f"stopped at step {res.stopped_at}: a monitor alarm fired (see {out}/monitor.html); rerun to resume")
    if res.history:
        first, last = res.history[0], res.history[-1]
        typer.echo(f"reward {first['grpo/reward']:.3f} (step 0) → {last['grpo/reward']:.3f} (step {last['step']})")
        typer.echo(json.dumps({k: round(v, 4) for k, v in last.items() if isinstance(v, float)}))
    typer.echo(f"wrote {out}/metrics.jsonl and {out}/plot.html")


HELDOUT_SEED = 999_983  # task problems the monitor watches: a seed no training step uses (steps use seed·1,000,003 + step)


def heldout_problems(cfg: GRPOConfig, per_kind: int = 4):
    """Fixed held-out task problems as monitor prompts, one topic per problem kind."""
    from anatomist.data.heldout import HeldoutPrompt
    from anatomist.tasks.arithmetic import make_problems

    problems = make_problems(per_kind * len(cfg.kinds), seed=HELDOUT_SEED, kinds=cfg.kinds, max_operand=cfg.max_operand)
    return [HeldoutPrompt(f"task-{i}", p.kind, ({"role": "user", "content": p.question},))
            for i, p in enumerate(problems)]
