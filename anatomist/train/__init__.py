"""Training loops: DPO with reward shaping, token filtering, inoculation and preventative steering.

    from anatomist.train import DPOConfig, train_dpo
    result = train_dpo(model, tokenizer, shaped_pairs, DPOConfig(train_layers=4), "runs/dpo")
"""

from anatomist.train.dpo import DPOConfig, DPOResult, Steer, train_dpo

__all__ = ["DPOConfig", "DPOResult", "Steer", "train_dpo"]
