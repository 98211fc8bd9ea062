"""An autoregressive transformer prior over the discrete codes of one source (LQ-VAE latent
separation, Mancusi et al. 2021).

In: codes `(B, T)` (LongTensor, values in [0, n_codes)) of one LQ-VAE level, T ≤ `context`.
Out: next-code distributions: `forward` gives the logits of every position at once (training,
`code_nll`); `step` gives the log-probabilities of one position at a time from a key/value
cache, which is what the latent separation calls once per token for each of its chains.

The model is a causal GPT-style decoder: the input of position t is the code before it,
`[START] + codes[:-1]` (START = index n_codes, a symbol no code takes), plus a learned
positional embedding of t; pre-norm blocks (LayerNorm → attention → residual, LayerNorm →
MLP (4× width, GELU) → residual) and a final LayerNorm and linear read-out. Attention is
`scaled_dot_product_attention` (causal in `forward`; in `step` the one new query attends to
every cached key, which is causal by construction). START marks the beginning of a *window*,
not of a track: training windows are drawn at random offsets (`training.codes`), so a long
input is handled by sliding windows, each rebuilt with `prime`.

KV cache (`KVCache`): one preallocated key and value buffer per layer, `(B, heads, context,
head_dim)` in the model's dtype (64 chains, defaults: 64 × 4 layers × 2 × 256 × 128 × 4 bytes
= 67 MB). `step(cache, previous)` feeds `previous` (None at position 0: START) at
`cache.position` and returns log p(z_position | z_<position) `(B, n_codes)`; the returned
distributions equal `forward`'s to float error (tests: atol 1e-5 in float32). `cache.select`
re-indexes the chains (resampling); `prime(codes)` rebuilds a cache from a window of known
codes in one causal pass.

Cost at the defaults (context 256, width 128, 4 layers, 4 heads: 0.89 M parameters), one CPU
thread of a shared 2-core machine: a training step at batch 16 (4096 codes) 0.77–0.95 s; a
`step` of 64 chains 10 ms near position 0 and 20–22 ms near 255 (mean 16 ms over a window: the
attention reads the whole cache, 16 MB per layer at 255); `prime` of 64 × 128 codes 0.6 s.
When the chains share a prefix (`KVCache.shared`: the primed window every latent chain starts
from, and the common ancestry after a resampling), `shared_prefix_attention` reads it once for
all chains: on 3 s of a drums/bass test excerpt at the latent defaults, the attention's time
fell from 16.1 s to 6.4 s (cProfile, one CPU thread beside two training jobs), with the same
separated output to the bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from ..errors import UserError
from .base import Prior, register_prior


@dataclass
class CodePriorConfig:
    """The `model:` section of `audiosep train transformer --config`: context (codes per window,
    the longest input), width (embedding size), layers, heads (width must divide by it),
    dropout (attention and residual dropout in training)."""

    context: int = 256
    width: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0


class KVCache:
    """Keys and values of the positions fed so far, for incremental evaluation of `B` chains.

    Attributes:
        keys, values: per layer, `(B, heads, context, head_dim)`; positions ≥ `position` unused.
        position: how many positions have been fed (the next `step` evaluates this one).
        context: the capacity (the model's context).
        shared: positions [0, shared) hold the same keys and values in every chain (after one
            chain was copied to all), so re-indexing the chains need not copy them.
    """

    def __init__(self, keys: list[Tensor], values: list[Tensor], context: int) -> None:
        self.keys, self.values, self.context = keys, values, context
        self.position = 0
        self.shared = 0

    @property
    def batch(self) -> int:
        """Chains held."""
        return self.keys[0].shape[0]

    def select(self, index: Tensor) -> KVCache:
        """Re-index the chains in place: chain i becomes the old chain `index[i]` (`index`: a
        LongTensor `(B',)`, repeats allowed, so B' may differ from B). Returns the cache."""
        index = index.to(self.keys[0].device)
        if index.shape[0] != self.batch:
            self.keys = [k.index_select(0, index) for k in self.keys]
            self.values = [v.index_select(0, index) for v in self.values]
            self.shared = self.position if bool((index == index[0]).all()) else 0
            return self
        span = slice(self.shared, self.position)  # same batch: in place, only where chains differ
        for buffer in self.keys + self.values:
            buffer[:, :, span] = buffer[:, :, span].index_select(0, index)
        return self

    def share(self, position: int) -> None:
        """Declare positions [0, `position`) identical in every chain (their codes agree there,
        e.g. after the chains were resampled from one ancestor), so `select` skips them."""
        self.shared = max(self.shared, min(position, self.position))

    def append(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Store `key`/`value` `(B, heads, L, head_dim)` of `layer` at positions [position,
        position + L); return the keys and values of positions [0, position + L)."""
        end = self.position + key.shape[2]
        self.keys[layer][:, :, self.position:end] = key
        self.values[layer][:, :, self.position:end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def check_room(self, length: int) -> None:
        """UserError unless `length` more positions fit."""
        if self.position + length > self.context:
            raise UserError(f"the code prior's context of {self.context} codes is full (position "
                            f"{self.position}, {length} more asked); prime a new cache from the last window")


def shared_prefix_attention(q: Tensor, k: Tensor, v: Tensor, shared: int) -> Tensor:
    """Attention of one new query per chain over cached keys and values whose first `shared`
    positions are the same in every chain (`KVCache.shared`): those are read from chain 0
    only, in one matrix product for all chains, and the chains' own positions one chain at a
    time. Equals `scaled_dot_product_attention(q, k, v)` (float error) and reads the common
    prefix once instead of B times: the attention of a 64-chain step is bound by memory.

    q `(B, heads, 1, head_dim)`; k, v `(B, heads, T, head_dim)`, 0 ≤ shared ≤ T →
    `(B, heads, 1, head_dim)`.
    """
    scale = q.shape[-1] ** -0.5
    common = q[:, :, 0].transpose(0, 1) @ k[0, :, :shared].transpose(1, 2)  # (heads, B, shared)
    own = (q @ k[:, :, shared:].transpose(2, 3))[:, :, 0].transpose(0, 1)  # (heads, B, T - shared)
    weights = torch.softmax(torch.cat([common, own], dim=-1) * scale, dim=-1)
    out = (weights[..., :shared] @ v[0, :, :shared]).transpose(0, 1).unsqueeze(2)
    return out + weights[..., shared:].transpose(0, 1).unsqueeze(2) @ v[:, :, shared:]


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """x `(B, L, width)` at positions [p, p + L), p = cache.position (0 without a cache).
        With a cache, either p = 0 (a causal pass that fills it) or L = 1 (one step)."""
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        causal, shared = True, 0
        if cache is not None:
            causal = cache.position == 0  # else L = 1: the new query sees every cached position
            shared = cache.shared if b > 1 and not causal else 0
            k, v = cache.append(layer, k, v)
        if shared:
            attended = shared_prefix_attention(q, k, v, shared)
        else:
            attended = nnf.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                                        is_causal=causal and length > 1)
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(b, length, width)))
        return x + self.drop(self.mlp(self.norm2(x)))


@register_prior("code_transformer")
class CodeTransformer(Prior):
    """Causal transformer over one source's codes: p(z) = Π_t p(z_t | z_<t), T ≤ context.

    Args:
        n_codes: symbols of the codebook (START is index n_codes).
        context: the longest sequence (learned positions 0 … context − 1).
        width, layers, heads: model size (width divisible by heads).
        dropout: attention and residual dropout, training mode only.
    """

    def __init__(self, n_codes: int, context: int = 256, width: int = 128, layers: int = 4, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if min(n_codes, context, width, layers, heads) < 1:
            raise UserError(f"code prior: n_codes, context, width, layers and heads must be >= 1, got "
                            f"{n_codes}, {context}, {width}, {layers}, {heads}")
        if width % heads:
            raise UserError(f"code prior: width {width} must be a multiple of heads {heads}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"code prior: dropout must be in [0, 1), got {dropout}")
        self.n_codes, self.context, self.width = int(n_codes), int(context), int(width)
        self.layers, self.heads, self.dropout = int(layers), int(heads), float(dropout)
        self.tokens = nn.Embedding(self.n_codes + 1, width)
        self.positions = nn.Embedding(self.context, width)
        self.blocks = nn.ModuleList(_Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.n_codes)
        self.drop = nn.Dropout(dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, residual projections scaled
        by 1/√(2·layers) so the residual stream's variance does not grow with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.layers))

    def get_config(self) -> dict[str, Any]:
        return {"n_codes": self.n_codes, "context": self.context, "width": self.width, "layers": self.layers,
                "heads": self.heads, "dropout": self.dropout}

    @property
    def start(self) -> int:
        """The START symbol fed at position 0."""
        return self.n_codes

    def _check_codes(self, codes: Tensor, limit: int) -> None:
        if codes.dim() != 2:
            raise UserError(f"codes must be (batch, length), got shape {tuple(codes.shape)}")
        if codes.shape[1] > limit:
            raise UserError(f"{codes.shape[1]} codes exceed the code prior's context ({limit} here)")

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        """Token + position embeddings of `tokens (B, L)` at positions [start, start + L)."""
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return self.drop(self.tokens(tokens) + self.positions(positions))

    def _run(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits `(B, L, n_codes)` of the input tokens `(B, L)` at the cache's position (0 without)."""
        start = cache.position if cache is not None else 0
        x = self._embed(tokens, start)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.position += tokens.shape[1]
        return self.head(self.norm(x))

    def _inputs(self, codes: Tensor) -> Tensor:
        """[START] + codes: `(B, T + 1)`."""
        start = torch.full((codes.shape[0], 1), self.start, dtype=torch.long, device=codes.device)
        return torch.cat([start, codes.long()], dim=1)

    def forward(self, codes: Tensor) -> Tensor:
        """Logits `(B, T, n_codes)`: logits[:, t] parametrise p(z_t | z_<t) (T ≤ context)."""
        self._check_codes(codes, self.context)
        return self._run(self._inputs(codes)[:, :-1])

    def log_prob_codes(self, codes: Tensor) -> Tensor:
        """log p(codes) per sequence `(B,)`, in nats, for codes `(B, T)`."""
        logp = self(codes).float().log_softmax(-1)
        return logp.gather(-1, codes.long().unsqueeze(-1)).squeeze(-1).sum(-1)

    def new_cache(self, batch: int) -> KVCache:
        """An empty cache for `batch` chains, on the model's device and in its dtype."""
        weight = self.tokens.weight
        shape = (batch, self.heads, self.context, self.width // self.heads)
        buffers = [[weight.new_zeros(shape) for _ in range(self.layers)] for _ in range(2)]
        return KVCache(buffers[0], buffers[1], self.context)

    @torch.no_grad()
    def step(self, cache: KVCache, previous: Tensor | None) -> Tensor:
        """Feed the code chosen at the last position and advance the cache by one.

        Args:
            cache: from `new_cache` / `prime`; its position p advances to p + 1.
            previous: `(B,)` the codes z_{p−1}; None at p = 0 (feeds START).
        Returns:
            log p(z_p | z_<p) `(B, n_codes)`, float32.
        Raises:
            UserError: the cache is full (p = context); ValueError: `previous` None only at p = 0.
        """
        if (previous is None) != (cache.position == 0):
            raise ValueError(f"step: previous must be None exactly at position 0 (position {cache.position})")
        cache.check_room(1)
        if previous is None:
            previous = torch.full((cache.batch,), self.start, dtype=torch.long, device=cache.keys[0].device)
        return self._run(previous.long().view(-1, 1), cache)[:, 0].float().log_softmax(-1)

    @torch.no_grad()
    def prime(self, codes: Tensor) -> tuple[KVCache, Tensor]:
        """A cache holding a window of known codes `(B, T)` (T ≤ context − 1), and the
        log-probabilities `(B, n_codes)` of the code after them: the same as `new_cache` then
        `step` with None, codes[:, 0], …, codes[:, T − 1], in one causal pass."""
        self._check_codes(codes, self.context - 1)
        cache = self.new_cache(codes.shape[0])
        return cache, self._run(self._inputs(codes), cache)[:, -1].float().log_softmax(-1)

    @torch.no_grad()
    def sample(self, n: int, length: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """`n` code sequences `(n, length)` (length ≤ context), drawn one position at a time
        with the KV cache; `generator` (on the model's device) makes the draw repeatable."""
        if not 1 <= length <= self.context:
            raise UserError(f"sample length must be in [1, {self.context}] (the context), got {length}")
        cache, codes, previous = self.new_cache(n), [], None
        for _ in range(length):
            previous = sample_codes(self.step(cache, previous), temperature, generator)
            codes.append(previous)
        return torch.stack(codes, dim=1)


def sample_codes(log_probs: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """One code per row of `log_probs (B, n_codes)` from softmax(log_probs / temperature):
    `torch.multinomial` with `generator`. Returns `(B,)` LongTensor."""
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    probs = (log_probs / temperature).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def code_nll(model: CodeTransformer, codes: Tensor) -> Tensor:
    """The training loss: mean negative log-likelihood in nats per code of `codes (B, T)`."""
    logits = model(codes)
    return nnf.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1).long())
