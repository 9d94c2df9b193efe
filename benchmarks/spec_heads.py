"""The head recipe the spec benchmarks share: argparse flags → one cached MTP head per loss.

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from spec_heads import add_head_args, heads_from_args
    add_head_args(ap); heads = heads_from_args(lm, ap.parse_args(), ["e2e_tv"])

The heads themselves are trained and cached by `anatomist.spec_decode.pipeline.cached_heads`;
this module only turns the benchmarks' flags into its arguments.
"""

from __future__ import annotations

from anatomist.models.loading import DEFAULT_MODEL
from anatomist.spec_decode.head import MTPHead
from anatomist.spec_decode.pipeline import cached_heads

__all__ = ["add_head_args", "benchmark_heads", "heads_from_args"]


def benchmark_heads(lm, losses, **kw) -> dict[str, MTPHead]:
    """One cached head per loss, all trained on the same self-samples (what the benchmarks
    compare); kw as `cached_heads`."""
    return {loss: head for loss, (head, _) in cached_heads(lm, losses, **kw).items()}


def add_head_args(ap) -> None:
    """The head recipe flags the spec benchmarks share. Defaults: every chat training prompt × 2
    self-samples (64K response tokens), 1000 steps × 8 — about 70 min once with one torch thread
    on a 2-core CPU (measured; three heads), then cached. The earlier 192 × 1, 200-step recipe
    reached train α1 0.26–0.28; this one 0.35–0.44."""
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model name, folder or .gguf")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--steps", type=int, default=1000, help="training steps of each head (cached)")
    ap.add_argument("--train-batch", type=int, default=8, help="sequences per head training step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--draft-vocab", type=int, default=8192, help="draft vocabulary size (0 = full)")
    ap.add_argument("--data-prompts", type=int, default=383, help="training prompts for self-samples (383 = all)")
    ap.add_argument("--samples-per-prompt", type=int, default=2, help="independent self-samples per prompt")
    ap.add_argument("--sample-tokens", type=int, default=96, help="new tokens per self-sample (part of the cache key)")


def heads_from_args(lm, args, losses) -> dict[str, MTPHead]:
    return benchmark_heads(lm, losses, model_name=args.model, steps=args.steps, batch_size=args.train_batch,
                           lr=args.lr, draft_vocab=args.draft_vocab, n_prompts=args.data_prompts,
                           samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.sample_tokens,
                           gen_batch=128 if args.device != "cpu" else 32)
