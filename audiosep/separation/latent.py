"""Bayesian separation in the latent domain of an LQ-VAE (Mancusi et al., arXiv 2110.05313).

What flows: a mono mixture `(1, N)` at the LQ-VAE's rate, m = x₀ + x₁ → the codes z_mix of
α₀x₀ + α₁x₁ (α = (½, ½): the LQ-VAE is linear in its quantised latent space, so the code of
the scaled mixture is the sum-table entry of the sources' codes) → for every token, N chains
sample a pair (a, b) of codes from the joint posterior

    log p(a, b | history, z_mix,t) = log p₀(a | a<t) + log p₁(b | b<t) + log ℓ(a, b)

where p₀, p₁ are the two sources' autoregressive code priors (KV-cached, one step per token)
and ℓ the likelihood of the mixture code given the pair: Gaussian,
−‖c[S[a, b]] − c[z_mix,t]‖² / 2σ² (S the sum table, c the codebook), or Dirac, 1 where
S[a, b] = z_mix,t and 0 elsewhere → every `window` tokens the chains' codes are decoded, the
N × N pairs (chain i of source 0 with chain j of source 1) are scored by their log-priors and
the waveform likelihood of the mixture window with the data-driven σ_rej of the paper, the best
pair is committed and every chain continues from it → the committed codes are decoded to
`(2, 1, N)` waveforms of the sources (at their own scale: x₀ and x₁, not α-scaled).

Choices and why:
- The joint over n² pairs is never materialised per chain: a pair is drawn exactly as
  a ~ Σ_b p(a, b), then b ~ p(b | a). The sum over b is a matrix product of the exponentiated,
  max-shifted factors (float32; a chain that could have lost mass to underflow is summed
  exactly by log-sum-exp instead), in blocks of rows bounded by `max_elements`: with n = 2048
  codes and 64 chains one (N, n, n) float32 joint would be 1 GiB per token. The likelihood
  table (n, n) is shared by all chains (it depends on the mixture code only). A broadcast
  log-sum-exp over the (N, n, n) joint was slower than the per-chain loop at 256 codes and
  64 chains (51 vs 27 ms per token on one CPU thread); the product is not.
- Both draws are inverse-CDF draws from uniforms taken from one generator up front, so the
  per-token reference loop (`sample_pairs_reference`, one chain at a time over its full n × n
  posterior) draws identical pairs: the benchmark's speed comparison is at equal samples.
- Selection never sees the references: it scores the decoded pairs against the mixture only
  (the earlier code printed the best-of-N SDR against the ground truth as its result).
- Windows: the priors see at most their context; every `window` tokens (default half the
  context) the pair is committed and the caches are rebuilt from the last committed codes, so
  inputs of any length are separated (the earlier code crashed past the context).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import UserError
from ..progress import progress_bar
from ..spectral.inversion import wiener_from_waveforms

LIKELIHOODS = ("gaussian", "dirac")
POSTFILTERS = ("none", "wiener")
DECODE_CONTEXT = 32  # committed codes decoded before a window's: 2048 samples at hop 64, beyond
                     # the default decoder's receptive field (about ±1100 samples)


@dataclass
class LatentConfig:
    """Settings of latent separation.

    Fields: n_chains (parallel chains N, 64 in the paper); sigma (σ of the Gaussian likelihood
    in codebook units, 0.4 in the paper); likelihood ("gaussian" | "dirac"); window (tokens
    sampled between two commits; None: half the priors' context); temperature (the priors'
    logits are divided by it); max_elements (floats in one block of the pair marginal, and in
    the cache of likelihood tables: bounds memory); alpha (weights of the codes' sum: the
    LQ-VAE encodes α₀x₀ + α₁x₁ = α·m, so they are equal for a mixture m = x₀ + x₁; (½, ½) is
    what the linearization loss trains); postfilter ("wiener", the default: the decoded
    waveforms' STFT powers as Wiener masks on the mixture,
    `spectral.inversion.wiener_from_waveforms`, since decoded codes carry a phase of their own,
    which BSSEval counts as artefacts; "none": the decoded waveforms, the paper's output);
    resample (sequential Monte Carlo within a window: each chain, a pair of code sequences, is
    weighted by its evidence Σ_{a,b} p₀(a)p₁(b)ℓ(a, b) at every token, and the chains are
    resampled (systematic) when their effective sample size falls below `resample` · N; 0
    never, the paper's independent chains; every resampling copies the chains' key/value
    caches past their common ancestry, so higher fractions cost time); seed. The measured
    effect of the post-filter and of resampling is in docs/results.md.
    """

    n_chains: int = 64
    sigma: float = 0.4
    likelihood: Literal["gaussian", "dirac"] = "gaussian"
    window: int | None = None
    temperature: float = 1.0
    max_elements: int = 1 << 24
    alpha: tuple[float, float] = (0.5, 0.5)
    postfilter: Literal["none", "wiener"] = "wiener"
    resample: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_chains < 1:
            raise UserError(f"latent separation: n_chains must be >= 1, got {self.n_chains}")
        if self.sigma <= 0:
            raise UserError(f"latent separation: sigma must be > 0, got {self.sigma}")
        if self.likelihood not in LIKELIHOODS:
            raise UserError(f"latent separation: likelihood must be one of {', '.join(LIKELIHOODS)}, "
                            f"got {self.likelihood!r}")
        if self.window is not None and self.window < 1:
            raise UserError(f"latent separation: window must be >= 1, got {self.window}")
        if self.postfilter not in POSTFILTERS:
            raise UserError(f"latent separation: postfilter must be one of {', '.join(POSTFILTERS)}, "
                            f"got {self.postfilter!r}")
        if not 0.0 <= self.resample <= 1.0:
            raise UserError(f"latent separation: resample must be in [0, 1] (a fraction of the chains), "
                            f"got {self.resample}")
        if self.temperature <= 0:
            raise UserError(f"latent separation: temperature must be > 0, got {self.temperature}")
        if len(self.alpha) != 2 or min(self.alpha) <= 0 or self.alpha[0] != self.alpha[1]:
            raise UserError(f"latent separation of m = x₀ + x₁: alpha must be two equal positive weights "
                            f"(the LQ-VAE encodes α·m), got {self.alpha}")


# ----------------------------------------------------------------------------- one token


def likelihood_table(sum_table: Tensor, codebook: Tensor, mix_code: int, sigma: float,
                     likelihood: str = "gaussian") -> Tensor:
    """log ℓ(a, b) of the mixture code for every pair of source codes, `(n, n)` float32.

    Args:
        sum_table: `(n, n)` long, S[a, b] = the code of α₀c[a] + α₁c[b] (row: source 0).
        codebook: `(n, d)` code vectors c.
        mix_code: the mixture's code z_mix,t at this token.
        sigma: σ of the Gaussian likelihood (codebook units).
        likelihood: "gaussian": −‖c[S[a, b]] − c[z_mix,t]‖² / 2σ²; "dirac": 0 where
            S[a, b] = z_mix,t, −inf elsewhere.
    """
    if likelihood == "dirac":
        zero = torch.zeros((), dtype=torch.float32, device=sum_table.device)
        return torch.where(sum_table == mix_code, zero, zero - math.inf)
    distance = (codebook.float() - codebook[mix_code].float()).square().sum(dim=1)  # (n,)
    return -distance[sum_table] / (2.0 * sigma ** 2)


def _inverse_cdf(log_weights: Tensor, uniforms: Tensor) -> Tensor:
    """Categorical draws by inverse CDF: row r of `log_weights` `(R, n)` (unnormalised, may hold
    −inf) with uniform `uniforms[r]` in [0, 1) → index `(R,)`. Weights in the input's
    precision, their cumulative sums in float64, so the batched and the per-chain paths pick
    the same index."""
    cdf = torch.softmax(log_weights, dim=-1).cumsum(dim=-1, dtype=torch.float64)
    index = torch.searchsorted(cdf, (uniforms.double() * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return index.clamp_(max=log_weights.shape[-1] - 1)


# Certification of the float32 product (`pair_marginal`): a product term below 2⁻¹²⁶ may be
# lost (flushed or denormal), at most n of them per sum, so a computed sum ≥ e^_SAFE_LOG is exact
# to float32 rounding (n·2⁻¹²⁶ < 3e-8 of it for n ≤ 2¹⁴), and a smaller one is truly ≤ e^(_SAFE_LOG + 1).
_SAFE_LOG = -60.0
# Such uncertain entries are accepted when even their upper bounds weigh this many nats below a
# chain's largest marginal entry (n·e⁻⁴⁰ < 1e-13 of it); else the chain is summed exactly.
_SAFE_MARGIN = 40.0


@dataclass(frozen=True)
class PairLikelihood:
    """log ℓ(a, b) of one mixture code with what `pair_marginal` derives from it.

    Fields: log `(n, n)` float32 (`likelihood_table`); row_max `(n,)` its row maxima; shift
    `(n,)` float32, the finite row maxima (0 for an all −inf row); factor exp(log − shift)
    `(n, n)` float32 when it fits in `max_elements` floats, else None (`pair_marginal` then
    exponentiates block by block). Built once per distinct mixture code (`LikelihoodCache`).
    """

    log: Tensor
    row_max: Tensor
    shift: Tensor
    factor: Tensor | None

    @classmethod
    def of(cls, loglik: Tensor, max_elements: int = 1 << 24) -> PairLikelihood:
        """The factors of `loglik` `(n, n)`; `factor` kept only if n² ≤ `max_elements`."""
        row_max = loglik.amax(dim=-1)
        shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).float()
        factor = None
        if loglik.numel() <= max_elements:
            factor = torch.exp(loglik.float() - shift[:, None])
        return cls(loglik, row_max, shift, factor)

    def factor_rows(self, start: int, stop: int) -> Tensor:
        """exp(log − shift) of rows [start, stop) `(rows, n)` float32."""
        if self.factor is not None:
            return self.factor[start:stop]
        return torch.exp(self.log[start:stop].float() - self.shift[start:stop, None])


class LikelihoodCache:
    """`PairLikelihood` per mixture code, the least recently used dropped past `max_elements`
    floats in all: a mixture's codes repeat, so each table is exponentiated once per code
    rather than once per token."""

    def __init__(self, sum_table: Tensor, codebook: Tensor, sigma: float, likelihood: str,
                 max_elements: int = 1 << 24) -> None:
        self.sum_table, self.codebook, self.sigma, self.likelihood = sum_table, codebook, sigma, likelihood
        self.max_elements = max_elements
        self._entries: OrderedDict[int, PairLikelihood] = OrderedDict()

    def __call__(self, mix_code: int) -> PairLikelihood:
        """The likelihood of the pairs given mixture code `mix_code`."""
        entry = self._entries.get(mix_code)
        if entry is None:
            log = likelihood_table(self.sum_table, self.codebook, mix_code, self.sigma, self.likelihood)
            entry = PairLikelihood.of(log, self.max_elements)
            self._entries[mix_code] = entry
            per_entry = 2 * log.numel()
            while len(self._entries) > 1 and len(self._entries) * per_entry > self.max_elements:
                self._entries.popitem(last=False)
        self._entries.move_to_end(mix_code)
        return entry


def pair_marginal(log_p0: Tensor, log_p1: Tensor, loglik: Tensor | PairLikelihood,
                  max_elements: int = 1 << 24) -> Tensor:
    """log Σ_b exp(log p₀[i, a] + log p₁[i, b] + log ℓ[a, b]) for every chain i and code a, `(N, n)`.

    The sum over b is one float32 matrix product per block of rows a, after shifting each
    factor by its own maximum: exp(log p₁ − max) `(N, n)` @ exp(log ℓ − row max)ᵀ `(n, rows)`;
    a block holds at most `max_elements` floats, so the `(N, n, n)` joint never exists. The
    product is certified chain by chain: sums small enough to have lost terms to float32
    underflow (below e^−60 of their factors' maxima) must weigh less than e^−40 of the
    chain's largest entry even at their upper bounds; a chain where they might not (factors
    spread over more than ~60 nats) is summed exactly by a float64 log-sum-exp instead.
    `loglik`: the `(n, n)` table or its `PairLikelihood` (the same result, without
    exponentiating the table again).
    """
    lik = loglik if isinstance(loglik, PairLikelihood) else PairLikelihood.of(loglik, 0)
    n_chains, n = log_p0.shape
    p1_max = log_p1.amax(dim=-1, keepdim=True)  # (N, 1)
    p1 = torch.exp(log_p1 - p1_max).float()  # (N, n)
    rows = max(1, min(n, max_elements // max(1, max(n_chains, n))))
    log_sum = torch.empty(n_chains, n, dtype=torch.float32, device=log_p0.device)
    for start in range(0, n, rows):
        torch.log(p1 @ lik.factor_rows(start, start + rows).T, out=log_sum[:, start:start + rows])
    base = log_p0.double() + p1_max.double()  # (N, n)
    out = log_sum.double() + (base + lik.shift.double())
    uncertain = log_sum < _SAFE_LOG
    if bool(uncertain.any()):
        bound = torch.where(uncertain, base + lik.row_max.double(), torch.full_like(out, -math.inf)) + (_SAFE_LOG + 1.0)
        redo = (bound.amax(dim=-1) > out.amax(dim=-1) - _SAFE_MARGIN).nonzero().flatten().tolist()
        if redo:
            loglik64 = lik.log.double()
            for i in redo:
                out[i] = torch.logsumexp(log_p1[i].double().unsqueeze(0) + loglik64, dim=-1) + log_p0[i].double()
    return out.to(log_p0.dtype)


def sample_pairs(log_p0: Tensor, log_p1: Tensor, loglik: Tensor, uniforms: Tensor,
                 max_elements: int = 1 << 24) -> tuple[Tensor, Tensor]:
    """Draw one pair (a, b) per chain from the joint posterior, exactly, in bounded memory.

    Args:
        log_p0, log_p1: `(N, n)` the sources' next-code log-probabilities per chain.
        loglik: `(n, n)` log ℓ(a, b) (`likelihood_table`).
        uniforms: `(N, 2)` uniforms in [0, 1): column 0 draws a from its marginal, column 1
            draws b given a.
    Returns:
        (a, b), each `(N,)` long. A chain whose posterior is empty (a Dirac likelihood no pair
        of nonzero prior satisfies) draws from the priors alone.
    """
    return draw_pairs(pair_marginal(log_p0, log_p1, loglik, max_elements), log_p0, log_p1, loglik, uniforms)


def draw_pairs(marginal: Tensor, log_p0: Tensor, log_p1: Tensor, loglik: Tensor,
               uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """`sample_pairs` given the pair marginal `(N, n)` of `pair_marginal` (modified in place
    for empty chains)."""
    empty = torch.isneginf(marginal.amax(dim=-1))
    if empty.any():
        marginal[empty] = log_p0[empty] + torch.logsumexp(log_p1[empty], dim=-1, keepdim=True)
    a = _inverse_cdf(marginal, uniforms[:, 0])
    conditional = log_p1 + loglik[a]
    stuck = torch.isneginf(conditional.amax(dim=-1))  # the chains of `empty`, or an a of no valid b
    if stuck.any():
        conditional[stuck] = log_p1[stuck]
    b = _inverse_cdf(conditional, uniforms[:, 1])
    return a, b


def effective_sample_size(log_weights: Tensor) -> float:
    """(Σw)² / Σw² of the chains' importance weights, given as logs `(N,)` (−inf allowed):
    N for equal weights, 1 when one chain holds all the mass, 0 when none has any."""
    if torch.isneginf(log_weights).all():
        return 0.0
    w = torch.softmax(log_weights.double(), dim=0)
    return float(1.0 / w.square().sum())


def common_prefix(codes: Tensor) -> int:
    """How many leading columns of `codes` `(N, L)` hold one value in every row: after a
    resampling, the chains' shared ancestry (their caches agree there)."""
    differs = (codes != codes[:1]).any(dim=0)
    return int(differs.int().argmax()) if bool(differs.any()) else codes.shape[1]


def systematic_resample(log_weights: Tensor, uniform: float) -> Tensor:
    """Systematic resampling of N chains by their log-weights `(N,)`: chain i is kept about
    N·wᵢ times (never fewer than ⌊N·wᵢ⌋ nor more than ⌈N·wᵢ⌉), from one uniform in [0, 1).
    Returns the `(N,)` long indices of the chains that continue, in increasing order."""
    n = log_weights.shape[0]
    cdf = torch.softmax(log_weights.double(), dim=0).cumsum(dim=0)
    points = (torch.arange(n, dtype=torch.float64, device=cdf.device) + uniform) / n
    return torch.searchsorted(cdf, points * cdf[-1]).clamp_(max=n - 1)


def sample_pairs_reference(log_p0: Tensor, log_p1: Tensor, loglik: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """`sample_pairs` one chain at a time over its full `(n, n)` posterior: the per-token
    reference of the benchmark (same draws for the same uniforms)."""
    a_out, b_out = [], []
    for i in range(log_p0.shape[0]):
        joint = log_p0[i].unsqueeze(1) + log_p1[i].unsqueeze(0) + loglik  # (n, n)
        marginal = torch.logsumexp(joint, dim=1)
        if torch.isneginf(marginal).all():
            marginal = log_p0[i] + torch.logsumexp(log_p1[i], dim=0)
            joint = log_p0[i].unsqueeze(1) + log_p1[i].unsqueeze(0)
        a = _inverse_cdf(marginal.unsqueeze(0), uniforms[i:i + 1, 0])
        conditional = joint[a[0]]
        if torch.isneginf(conditional).all():
            conditional = log_p1[i]
        b = _inverse_cdf(conditional.unsqueeze(0), uniforms[i:i + 1, 1])
        a_out.append(a)
        b_out.append(b)
    return torch.cat(a_out), torch.cat(b_out)


# ----------------------------------------------------------------------------- selection


def pair_scores(x0: Tensor, x1: Tensor, target: Tensor, prior0: Tensor, prior1: Tensor,
                alpha: Sequence[float], n_tokens: int) -> Tensor:
    """Log-posterior of every pair (chain i of source 0, chain j of source 1), `(N, N)`.

    score[i, j] = prior0[i] + prior1[j] − ‖target − α₀x0[i] − α₁x1[j]‖² / 2σ²_rej, with
    σ²_rej = −mean‖·‖² / (2 · mean log-prior per token) (the paper's data-driven scale: the
    likelihood and the priors then weigh alike on average).

    Args:
        x0, x1: `(N, L)` decoded waveforms of the chains.
        target: `(L,)` the scaled mixture α₀x₀ + α₁x₁.
        prior0, prior1: `(N,)` summed code log-priors of the chains over the window (nats).
        n_tokens: tokens in the window.
    """
    y0, y1 = alpha[0] * x0.double(), alpha[1] * x1.double()
    t = target.double()
    r0 = t.unsqueeze(0) - y0  # (N, L): residual before source 1
    l2 = (r0.square().sum(1).unsqueeze(1) - 2.0 * r0 @ y1.T + y1.square().sum(1).unsqueeze(0))
    l2 = l2.clamp_min(0.0)
    prior_per_token = (prior0.double().mean() + prior1.double().mean()) / (2 * max(n_tokens, 1))
    sigma2 = -l2.mean() / (2.0 * prior_per_token) if prior_per_token < 0 else l2.mean().clamp_min(1e-12)
    sigma2 = sigma2.clamp_min(1e-12)
    return prior0.double().unsqueeze(1) + prior1.double().unsqueeze(0) - l2 / (2.0 * sigma2)


def best_pair(scores: Tensor) -> tuple[int, int]:
    """(i, j) of the highest score (the first on ties)."""
    flat = int(torch.argmax(scores).item())
    return divmod(flat, scores.shape[1])


# ----------------------------------------------------------------------------- the method


class LatentSeparator:
    """A Separator method: LQ-VAE + one code prior per source → `(2, 1, N)` stems.

    Attributes: sources (names, in the order of the priors), sample_rate (the LQ-VAE's),
    channels = 1 (mono; the Separator takes the channel mean), level_db (the RMS level, dBFS, the
    Separator brings the mixture m to: the one at which α·m has the level of the LQ-VAE's
    training mixtures, when its checkpoint states it).
    """

    channels = 1

    def __init__(self, lqvae, priors: Sequence, sources: Sequence[str], sum_table: Tensor,
                 config: LatentConfig | None = None, level_db: float | None = None, progress: bool = True) -> None:
        if len(priors) != 2 or len(sources) != 2:
            raise UserError(f"latent separation takes exactly two code priors, got {len(priors)}")
        self.lqvae, self.priors, self.sources = lqvae, list(priors), list(sources)
        self.config = config or LatentConfig()
        self.sum_table = sum_table
        self.sample_rate = int(lqvae.get_config()["sample_rate"])
        self.level_db = level_db
        self.progress = progress
        self.report = None  # set by `Separator`: called with the fraction of a chunk's tokens done
        self.hop = lqvae.hop()
        context = min(p.get_config()["context"] for p in self.priors)
        self.window = self.config.window or max(1, context // 2)
        if self.window >= context:
            raise UserError(f"latent separation: window ({self.window}) must be shorter than the priors' "
                            f"context ({context})")
        self.context = context

    @classmethod
    def from_files(cls, lqvae_path: str | os.PathLike, prior_paths: Sequence[str | os.PathLike],
                   config: LatentConfig | None = None, device: str | torch.device = "cpu") -> LatentSeparator:
        """Load an LQ-VAE checkpoint and two code-prior checkpoints (named after their files'
        stems, e.g. drums.pt bass.pt → drums, bass) trained on its codes.

        Raises:
            UserError: a checkpoint of another kind; a prior trained on the codes of another
                LQ-VAE (both named); not two priors.
        """
        from pathlib import Path

        from ..priors.base import load_checkpoint, load_prior
        from ..priors.vqvae import load_lqvae, load_sum_table

        if len(prior_paths) != 2:
            raise UserError(f"latent separation takes two code priors (one per source), got {len(prior_paths)}")
        lqvae = load_lqvae(lqvae_path, device)
        codes = lqvae.code_domain()
        priors = []
        for path in prior_paths:
            prior = load_prior(path, device=device)
            if prior.kind != "code_transformer":
                raise UserError(f"{path}: a {prior.kind} checkpoint, not a code prior (train codes)")
            if prior.domain != codes:
                raise UserError(f"{path}: prior trained on {prior.domain.describe()}, but {lqvae_path} "
                                f"makes {codes.describe()}")
            priors.append(prior)
        config = config or LatentConfig()
        payload = load_checkpoint(lqvae_path)
        table = load_sum_table(payload, lqvae, tuple(config.alpha)).to(device)
        level_db = payload.get("extra", {}).get("level_db")  # of α·m in training: m goes 20·log10(1/α) dB above
        if level_db is not None:
            level_db = float(level_db) - 20.0 * math.log10(config.alpha[0])
        names = [Path(p).stem for p in prior_paths]
        if len(set(names)) != 2:
            raise UserError(f"the two priors are both named '{names[0]}'; stems are named after the files")
        return cls(lqvae, priors, names, table, config, level_db=level_db)

    def __call__(self, mix: Tensor) -> Tensor:
        """`(1, N)` mixture (m = x₀ + x₁) at `sample_rate` → `(2, 1, N)` stems."""
        if mix.dim() != 2 or mix.shape[0] != 1:
            raise UserError(f"latent separation needs a mono mixture (1, N), got shape {tuple(mix.shape)}")
        n = mix.shape[-1]
        scaled = self.config.alpha[0] * torch.nn.functional.pad(mix, (0, (-n) % self.hop))  # α₀x₀ + α₁x₁
        mix_codes = self.lqvae.encode(scaled.unsqueeze(0))[0]  # (T,)
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        codes = self.sample_codes(mix_codes, scaled[0], generator)
        stems = torch.stack([self.lqvae.decode(c.unsqueeze(0))[0] for c in codes])[..., :n]  # (2, 1, N)
        if self.config.postfilter == "wiener":
            stems = wiener_from_waveforms(stems, mix)
        return stems

    def sample_codes(self, mix_codes: Tensor, scaled: Tensor, generator: torch.Generator) -> list[Tensor]:
        """The committed codes of both sources, each `(T,)`, for the codes `(T,)` of the scaled
        mixture `scaled` = α₀x₀ + α₁x₁ `(T·hop,)`."""
        committed = [mix_codes.new_zeros(0), mix_codes.new_zeros(0)]
        total = mix_codes.shape[0]
        bar = progress_bar(total=total, desc="latent tokens", unit="token", disable=not self.progress, leave=False)
        likelihoods = self._likelihoods()
        try:
            for start in range(0, total, self.window):
                stop = min(start + self.window, total)
                window = self._sample_window(committed, mix_codes[start:stop], likelihoods, generator, bar)
                chosen = self._select(committed, window, scaled[start * self.hop:stop * self.hop])
                committed = [torch.cat([committed[k], chosen[k]]) for k in range(2)]
                if self.report is not None:
                    self.report(stop / total)
        finally:
            bar.close()
        return committed

    def _likelihoods(self) -> LikelihoodCache:
        """An empty cache of the likelihood tables of this separator's settings (one per input:
        its entries depend on the mixture codes only)."""
        cfg = self.config
        return LikelihoodCache(self.sum_table, self.lqvae.codebook(), cfg.sigma, cfg.likelihood, cfg.max_elements)

    def _caches(self, committed: list[Tensor]) -> list[tuple]:
        """(cache, log-probs of the next code `(N, n)`) per source, every chain continuing the
        committed codes (the last context − window of them): one primed history, copied N times."""
        n_chains = self.config.n_chains
        out = []
        for prior, history in zip(self.priors, committed):
            keep = history[max(0, history.shape[0] - (self.context - self.window)):]
            if keep.numel() == 0:
                cache = prior.new_cache(1)
                log_p = prior.step(cache, None)
            else:
                cache, log_p = prior.prime(keep.unsqueeze(0))
            cache.select(torch.zeros(n_chains, dtype=torch.long, device=log_p.device))
            out.append((cache, log_p.expand(n_chains, -1)))
        return out

    def _sample_window(self, committed: list[Tensor], mix_codes: Tensor, likelihoods: LikelihoodCache,
                       generator: torch.Generator, bar: tqdm) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Run the N chains over one window: (codes0 (N, W), codes1 (N, W), log-prior0 (N,),
        log-prior1 (N,))."""
        cfg = self.config
        (cache0, log_p0), (cache1, log_p1) = self._caches(committed)
        primed = cache0.position, cache1.position  # where this window's codes start in each cache
        drawn = torch.empty(2, cfg.n_chains, mix_codes.shape[0], dtype=torch.long, device=log_p0.device)
        prior0 = torch.zeros(cfg.n_chains, dtype=torch.float64)
        prior1 = torch.zeros(cfg.n_chains, dtype=torch.float64)
        log_w = torch.zeros(cfg.n_chains, dtype=torch.float64)  # since the last resampling
        for t, mix_code in enumerate(mix_codes.tolist()):
            if t > 0:
                log_p0 = self.priors[0].step(cache0, drawn[0, :, t - 1])
                log_p1 = self.priors[1].step(cache1, drawn[1, :, t - 1])
            lp0 = torch.log_softmax(log_p0 / cfg.temperature, dim=-1)
            lp1 = torch.log_softmax(log_p1 / cfg.temperature, dim=-1)
            loglik = likelihoods(mix_code)
            uniforms = torch.rand(cfg.n_chains, 2, generator=generator, dtype=torch.float64)
            marginal = pair_marginal(lp0, lp1, loglik, cfg.max_elements)
            log_w += torch.logsumexp(marginal.double(), dim=-1).cpu()
            a, b = draw_pairs(marginal, lp0, lp1, loglik.log, uniforms.to(lp0.device))
            prior0 += lp0.gather(1, a.unsqueeze(1)).squeeze(1).double().cpu()
            prior1 += lp1.gather(1, b.unsqueeze(1)).squeeze(1).double().cpu()
            drawn[0, :, t], drawn[1, :, t] = a, b
            if cfg.resample > 0 and 0 < effective_sample_size(log_w) < cfg.resample * cfg.n_chains:
                keep = systematic_resample(log_w, float(torch.rand((), generator=generator, dtype=torch.float64)))
                cache0.select(keep)
                cache1.select(keep)
                drawn[:, :, :t + 1] = drawn[:, keep.to(drawn.device), :t + 1]
                for cache, start, codes in zip((cache0, cache1), primed, drawn):
                    cache.share(start + common_prefix(codes[:, :t]))  # codes[:, :t] are fed
                prior0, prior1 = prior0[keep], prior1[keep]
                log_w.zero_()
            bar.update(1)
        return drawn[0], drawn[1], prior0, prior1

    def _select(self, committed: list[Tensor], window: tuple[Tensor, Tensor, Tensor, Tensor],
                scaled: Tensor) -> list[Tensor]:
        """The best pair of chains of one window by `pair_scores` against the scaled mixture
        `(W·hop,)`, as its codes `[(W,), (W,)]`."""
        codes0, codes1, prior0, prior1 = window
        decoded = [self._decode_window(committed[k], codes) for k, codes in enumerate((codes0, codes1))]
        scores = pair_scores(decoded[0], decoded[1], scaled, prior0, prior1, self.config.alpha, codes0.shape[1])
        i, j = best_pair(scores)
        return [codes0[i], codes1[j]]

    def _decode_window(self, history: Tensor, codes: Tensor) -> Tensor:
        """Decode each chain's window codes `(N, W)` after the committed history (its last
        `DECODE_CONTEXT` codes, so the decoder sees the left context) → `(N, W·hop)`."""
        left = history[max(0, history.shape[0] - DECODE_CONTEXT):]
        full = torch.cat([left.unsqueeze(0).expand(codes.shape[0], -1), codes], dim=1)
        wave = self.lqvae.decode(full)[:, 0]
        return wave[:, left.shape[0] * self.hop:]
