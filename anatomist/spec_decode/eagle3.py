"""An EAGLE-3 draft head: the structure `speculators` (and vLLM / SGLang) serve for Llama trunks.

Depth 1 at position i:  a_i = FC([h_i^{l_1}; …; h_i^{l_A}])  (A trunk residual states, fused),
depth k:                g^k = Layer([Emb(x_{i+k}); g^{k-1}])  with g^0 = a,
logits = LMHead'(Norm(g^k)) over a reduced draft vocabulary V' (own, trained LM head).

The layer is the trunk's decoder-layer class with q/k/v reading 2H inputs; before attention the
embedding half goes through `input_layernorm`, the hidden half through an extra `hidden_norm`, and
the residual is the *un-normed* hidden half (speculators' `norm_before_residual=False`). FC is applied
once (depth 1); deeper depths feed the layer's pre-norm output back, as EAGLE-3's test-time training
does. Emb is the trunk's own (frozen, not saved). Draft ids map to the trunk's vocabulary by
`vocab_ids` (exported as d2t offsets and a t2d mask), so q is zero outside V' — exact rejection
sampling only needs q to be the distribution the draft was sampled from.

The aux states are HF `hidden_states[l]` (the residual stream entering layer l, pre final norm),
the tensors vLLM and SGLang collect for `eagle_aux_hidden_state_layer_ids` (`hidden + residual`
before layer l); `pack_states` gathers them after h. Layer L (post-norm) is refused: engines never
collect it as an aux state. (Some engine paths add a `None` residual at layer 0, so real trunks
should keep the default ids, e.g. [2, 15, 27] for 30 layers; tiny test trunks use 0.)
Attention (which entries a chain sees) is MTPHead's, reused unchanged via `chain_states`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from anatomist.errors import AnatomistError
from anatomist.models.layers import decoder_layers
from anatomist.spec_decode.head import MTPHead, trunk_base

__all__ = ["Eagle3Config", "Eagle3Head", "pack_states", "default_aux_layers"]


@dataclass
class Eagle3Config:
    gamma: int = 3
    draft_vocab: int = 0  # 0 = full vocabulary
    aux_layers: list[int] = field(default_factory=list)  # [] = EAGLE-3's default (see default_aux_layers)
    base_model: str = ""
    loss: str = ""
    extra: dict = field(default_factory=dict)


def default_aux_layers(num_layers: int) -> list[int]:
    """EAGLE-3's low / middle / high choice [2, L//2, L−3] (speculators' and vLLM's default),
    clamped into 0..L−1 and deduplicated for trunks of fewer than 6 layers (the export writes the
    ids explicitly, so engines read the same ones)."""
    return sorted({min(max(i, 0), num_layers - 1) for i in (2, num_layers // 2, num_layers - 3)})


def pack_states(hidden_states: tuple[torch.Tensor, ...], layers) -> torch.Tensor:
    """HF `output_hidden_states` tuple (L+1 × [B, T, H], the last one post-norm) → packed
    [h; hidden_states[l_1]; …] [B, T, (1+A)·H]: h for the targets, the aux states for the head."""
    return torch.cat([hidden_states[-1]] + [hidden_states[i] for i in layers], dim=-1)


class Eagle3Head(nn.Module):
    """EAGLE-3 draft head bound to a frozen trunk (see the module docstring for the equations)."""

    kind = "eagle3"  # key in spec_decode.heads.HEADS

    def __init__(self, trunk: nn.Module, config: Eagle3Config, vocab_ids: torch.Tensor | None = None):
        super().__init__()
        tcfg = trunk.config
        base = trunk_base(trunk)
        L, H = tcfg.num_hidden_layers, tcfg.hidden_size
        if not config.aux_layers:
            config.aux_layers = default_aux_layers(L)
        if min(config.aux_layers) < 0 or max(config.aux_layers) >= L:
            raise AnatomistError(f"aux_layers {config.aux_layers} outside 0..{L - 1} (layer L is post-norm, not served)")
        self.config = config
        A = len(config.aux_layers)
        norm_cls = type(base.norm)
        self.fc = nn.Linear(A * H, H, bias=False)
        last = decoder_layers(trunk)[-1]
        self.layer = type(last)(tcfg, 0)
        att = self.layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(last.self_attn, name)
            new = nn.Linear(2 * H, old.out_features, bias=old.bias is not None)
            with torch.no_grad():  # start as the trunk's last layer reading the hidden half only
                new.weight.zero_()
                new.weight[:, H:].copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            setattr(att, name, new)
        self.hidden_norm = norm_cls(H, eps=tcfg.rms_norm_eps)
        self.norm = norm_cls(H, eps=tcfg.rms_norm_eps)
        self.rotary = type(base.rotary_emb)(config=tcfg)
        with torch.no_grad():
            keep = {k: v for k, v in last.state_dict().items() if not k.startswith("self_attn.") or "o_proj" in k}
            self.layer.load_state_dict(keep, strict=False)
            self.norm.load_state_dict(base.norm.state_dict())
            self.fc.weight.copy_(torch.cat([torch.eye(H)] * A, dim=1) / A)  # mean of the aux states
        lm = trunk.get_output_embeddings().weight
        V = lm.shape[0]
        if vocab_ids is None:
            vocab_ids = torch.arange(V) if config.draft_vocab <= 0 else torch.arange(config.draft_vocab)
        self.register_buffer("vocab_ids", vocab_ids.long().clone(), persistent=True)  # [V']
        self.vocab_size = V
        self.full_vocab = self.vocab_ids.numel() == V and bool((self.vocab_ids == torch.arange(V)).all())
        # EAGLE-3's LM head is the draft's own (trained), initialised from the trunk's rows.
        self.lm_head = nn.Parameter(lm.detach()[self.vocab_ids.to(lm.device)].clone().cpu())
        self.to(trunk.get_input_embeddings().weight.device)
        self.bind(trunk)

    @property
    def state_layers(self) -> tuple[int, ...]:
        return tuple(self.config.aux_layers)

    def bind(self, trunk: nn.Module) -> None:
        """(Re)attach the trunk's embedding and the draft-vocab rows of its LM head (the training
        targets, `_lm`) as frozen, unregistered views; the head's own `lm_head` is separate."""
        self._embed = trunk.get_input_embeddings().weight.detach()
        lm = trunk.get_output_embeddings().weight.detach()
        self._lm = lm if self.full_vocab else lm[self.vocab_ids.to(lm.device)].contiguous()

    def enter(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed [h; aux_1; …; aux_A] [..., (1+A)·H] → FC(aux) [..., H], the depth-1 input."""
        return self.fc(packed[..., self.norm.weight.shape[0]:])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}

    def step(self, hidden: torch.Tensor, tokens: torch.Tensor, position_ids: torch.Tensor,
             mask: torch.Tensor, cache) -> torch.Tensor:
        """hidden [B, K, H] (FC output or g^{k-1}), tokens [B, K], position_ids [B, K],
        mask [B, 1, K, S+K] additive → g [B, K, H]."""
        lay = self.layer
        e = lay.input_layernorm(F.embedding(tokens.clamp(min=0), self._embed))
        x = torch.cat([e, self.hidden_norm(hidden)], dim=-1)  # [B, K, 2H]
        cos_sin = self.rotary(hidden, position_ids)
        att = lay.self_attn(hidden_states=x, attention_mask=mask, position_ids=position_ids,
                            cache=cache, position_embeddings=cos_sin)
        r = hidden + (att[0] if isinstance(att, tuple) else att)
        return r + lay.mlp(lay.post_attention_layernorm(r))

    def logits(self, g: torch.Tensor) -> torch.Tensor:
        """g [..., H] → draft logits over the draft vocabulary [..., V']."""
        return F.linear(self.norm(g), self.lm_head)

    chain_states = MTPHead.chain_states  # same attention pattern; depth 1 enters through `enter`
    forward_train = MTPHead.forward_train
