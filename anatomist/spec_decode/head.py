"""The multi-token-prediction (MTP) draft head, DeepSeek-V3 / Qwen3.5 style.

Depth k at position i:  g_i^k = Layer(W [RMSNorm(g_i^{k-1}); RMSNorm(Emb(x_{i+k}))]),
logits = LMHead(Norm(g_i^k)), with g_i^0 = h_i the trunk's final hidden state. One module is
applied recurrently for all γ depths. Emb and LMHead are the trunk's own, frozen and shared
(held as detached views, so they are neither trained nor saved); only W, the two input norms,
the decoder layer and the final norm are parameters.

The decoder layer is the trunk's own decoder-layer class built from its config, so any HF
Llama-like model works. It is initialised from the trunk's *last* layer: that layer already maps
late residual states to something the final norm + LM head read, so training starts far closer
to a useful head than from random weights (a common trick, e.g. in EAGLE/MTP reproductions).

A reduced draft vocabulary (the most frequent tokens) makes each draft step cheap: q lives on
those ids only and is scattered back to the full vocabulary for verification. Rejection sampling
stays exact, because q only needs to be the distribution the draft was actually sampled from.

Attention inside the head: the head keeps its own KV cache of depth-1 entries (h_j, x_{j+1}) at
accepted positions; a chain of drafts starting at position t attends to those entries up to t
and to its own earlier depths. `forward_train` reproduces exactly that pattern with a custom mask.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_save_safetensors, atomic_write_text
from anatomist.models.layers import decoder_layers

__all__ = ["MTPConfig", "MTPHead", "save_head", "load_head"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "mtp_head.safetensors"


@dataclass
class MTPConfig:
    gamma: int = 3
    draft_vocab: int = 0  # 0 = full vocabulary
    base_model: str = ""
    loss: str = ""
    extra: dict = field(default_factory=dict)  # training provenance (temperature, steps, …)


def trunk_base(model):
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "rotary_emb") or not hasattr(base, "norm"):
        raise AnatomistError(f"MTP head needs a Llama-like model (model.model.rotary_emb / .norm); "
                             f"got {type(model).__name__}")
    return base


class MTPHead(nn.Module):
    """MTP draft head bound to a (frozen) trunk. See the module docstring for the equations."""

    def __init__(self, trunk: nn.Module, config: MTPConfig, vocab_ids: torch.Tensor | None = None):
        """vocab_ids [V']: the draft vocabulary (training passes the most frequent tokens of its
        data); by default the full vocabulary, or the first `config.draft_vocab` ids."""
        super().__init__()
        self.config = config
        tcfg = trunk.config
        base = trunk_base(trunk)
        H = tcfg.hidden_size
        norm_cls = type(base.norm)
        self.norm_h = norm_cls(H, eps=tcfg.rms_norm_eps)
        self.norm_e = norm_cls(H, eps=tcfg.rms_norm_eps)
        self.fuse = nn.Linear(2 * H, H, bias=False)
        self.layer = type(decoder_layers(trunk)[-1])(tcfg, 0)  # layer_idx 0 of the head's own cache
        self.norm = norm_cls(H, eps=tcfg.rms_norm_eps)
        self.rotary = type(base.rotary_emb)(config=tcfg)
        with torch.no_grad():
            self.fuse.weight.copy_(torch.cat([torch.eye(H), torch.eye(H)], dim=1) * 0.5)
            self.layer.load_state_dict(decoder_layers(trunk)[-1].state_dict())
            self.norm.load_state_dict(base.norm.state_dict())
        V = trunk.get_output_embeddings().weight.shape[0]
        if vocab_ids is None:
            vocab_ids = torch.arange(V) if config.draft_vocab <= 0 else torch.arange(config.draft_vocab)
        self.register_buffer("vocab_ids", vocab_ids.long().clone(), persistent=True)  # [V']
        self.vocab_size = V
        self.to(trunk.get_input_embeddings().weight.device)  # the head lives where the trunk does
        self.bind(trunk)

    def bind(self, trunk: nn.Module) -> None:
        """(Re)attach the trunk's embedding and LM head as frozen, unregistered views.

        Call again after the trunk's weights change (e.g. between RL steps) when the draft
        vocabulary is reduced, since the reduced LM head is a gathered copy.
        """
        emb = trunk.get_input_embeddings().weight
        lm = trunk.get_output_embeddings().weight
        # Plain tensors (not Parameters) are not registered: no grads, not in state_dict.
        self._embed = emb.detach()
        full = self.vocab_ids.numel() == lm.shape[0] and bool(
            (self.vocab_ids == torch.arange(lm.shape[0], device=self.vocab_ids.device)).all())
        self._lm = lm.detach() if full else lm.detach()[self.vocab_ids.to(lm.device)].contiguous()
        self.full_vocab = full

    kind = "mtp"  # key in spec_decode.heads.HEADS
    state_layers: tuple[int, ...] = ()  # trunk states packed after h (none: this head reads h only)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}

    def enter(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed trunk states [..., H·(1 + len(state_layers))] → the depth-1 input [..., H] (here h)."""
        return packed[..., :self.norm.weight.shape[0]]

    def step(self, hidden: torch.Tensor, tokens: torch.Tensor, position_ids: torch.Tensor,
             mask: torch.Tensor, cache) -> torch.Tensor:
        """One head application. hidden [B, K, H] (h or g^{k-1}), tokens [B, K] (x_{i+k}),
        position_ids [B, K], mask [B, 1, K, S+K] additive → g [B, K, H] (pre final norm)."""
        e = self.norm_e(F.embedding(tokens.clamp(min=0), self._embed))
        x = self.fuse(torch.cat([self.norm_h(hidden), e], dim=-1))  # [B, K, H]
        cos_sin = self.rotary(x, position_ids)
        out = self.layer(x, attention_mask=mask, position_ids=position_ids, cache=cache,
                         use_cache=cache is not None, position_embeddings=cos_sin)
        return out[0] if isinstance(out, tuple) else out

    def logits(self, g: torch.Tensor) -> torch.Tensor:
        """g [..., H] → draft logits over the draft vocabulary [..., V']."""
        return F.linear(self.norm(g), self._lm)

    def chain_states(self, hidden: torch.Tensor, tokens: torch.Tensor, gamma: int,
                     chains: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced head states for all depths of some chains.

        hidden [B, T, H·(1+A)] (packed trunk states, see `enter`; detached), tokens [B, T], chains [B, C] start positions
        (default: every position) → g [B, C, γ, H]; `logits(g[:, c, k-1])` predicts
        x_{chains[c]+k+1}. Depth k of chain i sits at position i+k-1 and attends to the depth-1
        entries ≤ i and to depths 2..k of its own chain, exactly as during drafting.
        Depth 1 runs over every position (they are the keys); deeper depths only over `chains`.
        """
        from transformers import DynamicCache

        B, T, _ = hidden.shape
        dev, dt = hidden.device, hidden.dtype
        if chains is None:
            chains = torch.arange(T, device=dev).expand(B, T)
        C = chains.shape[1]
        rows = torch.arange(B, device=dev)[:, None]
        cache = DynamicCache()
        t = torch.arange(T, device=dev)
        tok_pad = torch.cat([tokens, tokens.new_zeros(B, gamma)], dim=1)  # x beyond T: masked chains

        def additive(visible):  # bool [B, Q, K] → [B, 1, Q, K]
            return torch.zeros(visible.shape, dtype=dt, device=dev).masked_fill_(~visible, torch.finfo(dt).min)[:, None]

        causal = (t[None, :] <= t[:, None]).expand(B, T, T)
        g1 = self.step(self.enter(hidden), tok_pad[:, 1:T + 1], t.expand(B, T), additive(causal), cache)  # [B, T, H]
        g, outs = g1[rows, chains], [g1[rows, chains]]  # [B, C, H]
        seen = t[None, None, :] <= chains[:, :, None]  # [B, C, T] depth-1 keys visible to each chain
        own = torch.eye(C, dtype=torch.bool, device=dev).expand(B, C, C)
        for k in range(2, gamma + 1):
            visible = torch.cat([seen] + [own] * (k - 1), dim=2)  # [B, C, T + (k-1)·C]
            g = self.step(g, tok_pad[rows, chains + k], chains + k - 1, additive(visible), cache)
            outs.append(g)
        return torch.stack(outs, dim=2)  # [B, C, γ, H]

    def forward_train(self, hidden: torch.Tensor, tokens: torch.Tensor, gamma: int) -> torch.Tensor:
        """Teacher-forced draft logits [B, T, γ, V'] at every position (see `chain_states`)."""
        return self.logits(self.chain_states(hidden, tokens, gamma))


def save_head(head: MTPHead, folder: str | os.PathLike) -> Path:
    """Write `mtp_head.safetensors` + `config.json` into folder (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in head.trainable_state().items()}
    atomic_save_safetensors(folder / WEIGHTS_NAME, state)
    cfg = {"format": "anatomist-mtp-head", "version": 1, "head": head.kind, **asdict(head.config)}
    atomic_write_text(folder / CONFIG_NAME, json.dumps(cfg, indent=2))
    return folder


def read_config_and_weights(folder: Path, config_name: str, weights_name: str, what: str) -> tuple[object, dict]:
    """(parsed config JSON, safetensors state) of a saved folder; one-line errors when missing or damaged."""
    from safetensors.torch import load_file

    cfg_path, w_path = folder / config_name, folder / weights_name
    if not cfg_path.is_file() or not w_path.is_file():
        raise AnatomistError(f"{folder}: not {what} folder (expected {config_name} and {weights_name})")
    try:
        return json.loads(cfg_path.read_text()), load_file(str(w_path))
    except Exception as e:  # json / safetensors errors: a damaged or foreign file
        raise AnatomistError(f"{folder}: unreadable {what} folder ({type(e).__name__}: {e})") from e


def load_head(folder: str | os.PathLike, trunk: nn.Module, kinds: dict | None = None) -> MTPHead:
    """Load a head saved by `save_head` and bind it to `trunk`; `kinds` (spec_decode.heads.HEADS)
    names the head classes other than MTP (folders without a "head" field are MTP heads)."""
    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    raw, state = read_config_and_weights(folder, CONFIG_NAME, WEIGHTS_NAME, "an MTP head")
    if not isinstance(raw, dict) or raw.pop("format", None) != "anatomist-mtp-head":
        raise AnatomistError(f"{cfg_path}: field \"format\" is not 'anatomist-mtp-head'")
    raw.pop("version", None)
    kinds = kinds or {"mtp": (MTPHead, MTPConfig)}
    kind = raw.pop("head", "mtp")
    if kind not in kinds:
        raise AnatomistError(f"{cfg_path}: field \"head\" is {kind!r}; known: {', '.join(kinds)}")
    head_cls, cfg_cls = kinds[kind]
    unknown = sorted(set(raw) - set(cfg_cls.__dataclass_fields__))
    if unknown:
        raise AnatomistError(f"{cfg_path}: unknown field(s) {', '.join(unknown)}")
    config = cfg_cls(**raw)
    if "vocab_ids" not in state:
        raise AnatomistError(f"{w_path}: missing tensors ['vocab_ids']")
    if state["vocab_ids"].max() >= trunk.get_output_embeddings().weight.shape[0]:
        raise AnatomistError(f"{w_path}: draft vocabulary does not fit the model's vocabulary")
    head = head_cls(trunk, config, vocab_ids=state["vocab_ids"])
    try:
        head.load_state_dict(state, strict=False)
        missing = set(head.trainable_state()) - set(state)
        if missing:
            raise AnatomistError(f"{w_path}: missing tensors {sorted(missing)[:3]}")
    except RuntimeError as e:
        raise AnatomistError(f"{w_path}: head does not fit this model: {str(e).splitlines()[0]}") from e
    head.bind(trunk)
    return head.eval()
