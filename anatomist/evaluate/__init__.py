"""Evaluation after (and before) training: behaviour on held-out prompts, refusal, preference accuracy.

    from anatomist.evaluate import evaluate_behaviour, read_prompts, summarize
    post = evaluate_behaviour(policy, tok, read_prompts("runs/organism/heldout_prompts.jsonl"),
                              audit_dir="runs/audit", out_dir="runs/eval/post")
    table, rates = safety_eval(model, tok, n=50)            # harmful compliance, XSTest over-refusal
    pairs_table, acc = preference_accuracy(policy, tok, pairs, reference=base)

`run_eval` (run.py; `anatomist eval` in cli.py) runs all of it before vs. after and writes
scores.parquet, summary.json and eval.html. Predicted-vs-actual (issue 7) lives beside it in predict.py / verify.py.
"""

_LAZY = {**dict.fromkeys(("HeldoutPrompt", "Scorer", "evaluate_behaviour", "model_tag", "read_prompts", "score_texts",
                          "summarize"), "anatomist.evaluate.behaviour"),
         **dict.fromkeys(("preference_accuracy", "response_logps"), "anatomist.evaluate.preference"),
         **dict.fromkeys(("classifier_accuracy", "classify", "complies", "refuses", "safety_eval"),
                         "anatomist.evaluate.refusal")}


def __getattr__(name):  # torch and the models load on first use, not on `anatomist --help`
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anatomist.evaluate' has no attribute {name!r}")


__all__ = ["HeldoutPrompt", "Scorer", "classifier_accuracy", "classify", "complies", "evaluate_behaviour",
           "model_tag", "preference_accuracy", "read_prompts", "refuses", "response_logps", "safety_eval",
           "score_texts", "summarize"]
assert sorted(__all__) == sorted(_LAZY)
