"""Flow B: MTP draft heads (TV losses), lossless speculative decoding, acceptance vs entropy.

    from anatomist.spec_decode import generate, make_drafter, load_head
    out = generate(model, prompts, drafter=make_drafter("mtp", head=load_head(dir, model)), temperature=1.0)
    out.tokens, out.logprobs, out.stats.mean_accept_len
"""

from anatomist.spec_decode.drafters import DRAFTERS, MTPDrafter, NGramDrafter, make_drafter
from anatomist.spec_decode.generate import AcceptStats, GenerateOutput, generate
from anatomist.spec_decode.head import MTPConfig, MTPHead, save_head
from anatomist.spec_decode.heads import HEADS, load_any_head as load_head  # any registered kind
from anatomist.spec_decode.losses import LOSSES
from anatomist.spec_decode.train import TrainConfig, train_head
from anatomist.spec_decode.verify import rejection_sample, sampling_probs

__all__ = ["AcceptStats", "DRAFTERS", "GenerateOutput", "LOSSES", "MTPConfig", "MTPDrafter", "MTPHead",
           "NGramDrafter", "TrainConfig", "generate", "load_head", "make_drafter", "rejection_sample",
           "sampling_probs", "save_head", "train_head"]
