"""VAE-BSS inference (Neri, Badeau & Depalle, EUSIPCO 2021): encode the mixture, decode
its K latents with the shared decoder, and optionally mask the mixture by them (VAEM).

Images:

- `vae_separate(model, mixtures)`: deterministic (z = μ; the earlier code sampled z at
  evaluation, so two runs gave two answers), in eval mode, batched.
- `vaem_mask(sources, mixture)`: šₖ = ŝₖ · m / Σⱼ ŝⱼ over **all** K outputs (the earlier
  code normalised over 2 of K after its permutation), so Σₖ šₖ = m wherever Σⱼ ŝⱼ > 0;
  where every output is 0 the mixture is shared equally, so the sum still holds.

Scale: the model reconstructs the mixture as Σₖ ŝₖ. With the mean mixing it was trained
on, m = Σⱼ xⱼ / J, each output estimates xⱼ / J: `vae_separate(..., n_mix=J)` multiplies
by J, so estimates are in the sources' own units (a digit in [0, 1]).

Audio (`VAEBSS`, the Separator method of `audiosep separate --method vae-bss`), for a VAE
trained by `audiosep train vae --data` on mixtures only:

    mix (C, N) ─STFT─▶ X (C, F, T) ─|mean over C|─▶ |X̄| (F, T) ─patchify, ÷ patch max─▶ (B, 1, F, P)
      ─encode, decode z = μ─▶ ŝ (B, K, 1, F, P) ─VAEM shares ŝₖ/Σⱼŝⱼ─▶ (align slots) ─overlap-add─▶
      masks (K, F, T), Σₖ = 1 ─× X, iSTFT─▶ stems (K, C, N), Σₖ = mix

The masks sum to one in every bin, so the stems sum to the mixture exactly (up to the
STFT round trip, ~1e-7); a stereo input gets the same masks on both channels. Outputs are
named source0 … source{K−1}: nothing in training says which slot holds which instrument.

Representation (`spectral.MagnitudeFrontend` defaults: 16 kHz mono, n_fft 1024, hop 256,
Hann, linear magnitude, patches of 513 bins × 16 frames divided by their maximum). The model
reconstructs a patch as the sum of its K outputs, so the domain must be additive: linear
magnitude is the most nearly additive of the domains tried (a compressed magnitude or dB
lowers the ratio-mask ceiling), 1024/256 because 2048/512 doubles the bins per frame for
little more ceiling, and 16 frames (256 ms: a note's onset and decay, which tell a piano from
a violin) because shorter and longer patches scored lower. A per-patch maximum makes the
input independent of the level (the masks ignore the scale). β stays at the paper's 0.5.

Permutation: the K slots share one decoder, so a slot may hold one instrument in one patch
and the other in the next. `align_slots` renames the slots per patch without references:
each slot's decoded spectrum (summed over the patch's frames, square-root compressed, unit
norm) is a point; K centroids start from the slots as decoded and, for `ALIGN_ITERATIONS`
rounds, every patch's K slots are assigned to the K centroids by the Hungarian algorithm
(maximum total cosine similarity) and the centroids re-estimated. It is off by default
(`VAEBSS(align=True)` turns it on): the slots as decoded already keep their spectral roles
from patch to patch. `benchmarks/vae_bss_audio.py` measures it against the per-track best
permutation and the per-patch oracle.

Status on audio: experimental. Trained on mixtures only, it does not yet separate piano /
violin mixtures better than returning half the mixture (docs/results.md).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..errors import UserError
from ..priors.base import load_prior
from ..priors.vae import VAE
from ..spectral.frontend import MagnitudeFrontend, PatchLayout, patchify, unpatchify

ALIGN_ITERATIONS = 10  # assignment / centroid rounds of `align_slots` (it usually settles in 2-4)


def vaem_shares(sources: Tensor) -> Tensor:
    """The VAEM ratio masks `(B, K, ...)`: ŝₖ / Σⱼ ŝⱼ (1/K where Σⱼ ŝⱼ = 0), for decoded
    `sources (B, K, ...)` ≥ 0; they sum to exactly 1 over the K outputs."""
    total = sources.sum(dim=1, keepdim=True)
    return torch.where(total > 0, sources / total.clamp_min(torch.finfo(sources.dtype).tiny),
                       torch.full_like(sources, 1.0 / sources.shape[1]))


def vaem_mask(sources: Tensor, mixture: Tensor) -> Tensor:
    """Masked sources `(B, K, ...)`: ŝₖ·m / Σⱼ ŝⱼ (m / K where Σⱼ ŝⱼ = 0), for `sources (B, K, ...)`
    and `mixture (B, ...)`; they sum to the mixture exactly over the K outputs."""
    return vaem_shares(sources) * mixture.unsqueeze(1)


@torch.no_grad()
def decode_slots(model: VAE, inputs: Tensor, batch_size: int = 1000) -> Tensor:
    """The K decoded sources `(B, K, C, H, W)` of inputs `(B, C, H, W)`: eval mode, z = μ (deterministic)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.decode(model.encode(chunk)[0]) for chunk in inputs.split(batch_size)])
    finally:
        model.train(was_training)


def vae_separate(model: VAE, mixtures: Tensor, mask: bool = True, n_mix: int = 2,
                 batch_size: int = 1000) -> Tensor:
    """Separate mixtures `(B, C, H, W)` (mean of `n_mix` sources) into K sources `(B, K, C, H, W)`.

    Args:
        model: a trained `VAE` (K = `model.n_sources`); used in eval mode, z = μ.
        mixtures: in the units the model was trained on.
        mask: VAEM (mask the mixture by the decoded sources) instead of the raw decoder outputs.
        n_mix: J, the sources averaged in a mixture; estimates are scaled by J to the
            sources' units.
        batch_size: mixtures per forward pass.
    """
    sources = decode_slots(model, mixtures, batch_size)
    return (vaem_mask(sources, mixtures) if mask else sources) * n_mix


# ----------------------------------------------------------------------------- audio


def slot_features(decoded: Tensor) -> Tensor:
    """Alignment features `(B, K, F)` of decoded patches `(B, K, 1, F, P)`: each slot's spectrum
    summed over the frames, square-root compressed, scaled to unit L2 norm (0 for an empty slot)."""
    profile = decoded.sum(dim=-1).flatten(2).sqrt()
    return profile / profile.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def align_slots(features: Tensor, iterations: int = ALIGN_ITERATIONS) -> Tensor:
    """A consistent naming of the K slots of B patches, without references.

    Args:
        features: `(B, K, D)` unit vectors, one per slot of each patch (`slot_features`).
        iterations: rounds of (Hungarian assignment of each patch's slots to K centroids,
            centroid update); it stops early once no assignment changes.
    Returns:
        perm `(B, K)` int64: group g of patch b is its slot perm[b, g] (`permute_slots`).
    """
    n_patches, k = features.shape[:2]
    perm = torch.arange(k).expand(n_patches, k).clone()
    feats = features.detach().double().cpu()
    for _ in range(iterations):
        centroids = permute_slots(feats, perm).mean(dim=0)  # (K, D)
        similarity = torch.einsum("bkd,gd->bgk", feats, centroids).numpy()  # group g × slot k
        new = torch.from_numpy(np.stack([linear_sum_assignment(s, maximize=True)[1] for s in similarity]))
        if torch.equal(new, perm):
            break
        perm = new
    return perm.to(features.device)


def permute_slots(slots: Tensor, perm: Tensor) -> Tensor:
    """`slots (B, K, ...)` reordered per patch: out[b, g] = slots[b, perm[b, g]] (perm `(B, K)`)."""
    index = perm.reshape(*perm.shape, *([1] * (slots.dim() - 2))).expand_as(slots)
    return slots.gather(1, index)


class VAEBSS:
    """VAE-BSS on STFT magnitudes as a Separator method: mixture `(C, N)` → stems `(K, C, N)`
    that sum to it (see the module docstring).

    Args:
        model: a VAE trained by `audiosep train vae --data` (its domain: STFT-magnitude patches).
        align: rename the slots per patch consistently (`align_slots`) before the masks are
            put together (off by default: it measured no gain, see the module docstring);
            False keeps the slots as decoded. The naming is made per call, i.e. per
            `Separator` chunk (`--segment`, 30 s by default).
        hop_frames: frames between patch starts (default: half a patch, at least 1).
        batch_size: patches per forward pass.
    Attributes: sources ("source0", …), sample_rate (the front end's), channels (None: any;
        one set of masks, from the channel mean, for every channel), frontend, model.

    Raises:
        UserError: a model trained on another domain than STFT-magnitude patches.
    """

    channels = None

    def __init__(self, model: VAE, align: bool = False, hop_frames: int | None = None,
                 batch_size: int = 256) -> None:
        domain = model.domain
        if domain is None or domain.kind != "magnitude":
            where = domain.describe() if domain is not None else "an unknown domain"
            raise UserError(f"VAE-BSS on audio needs a VAE trained on STFT-magnitude patches "
                            f"(audiosep train vae --data), not on {where}")
        self.model, self.align, self.batch_size = model.eval(), align, batch_size
        self.frontend = MagnitudeFrontend.from_dict(domain.frontend_dict)
        self.hop_frames = hop_frames or max(1, self.frontend.patch_frames // 2)
        self.sources = tuple(f"source{k}" for k in range(model.n_sources))
        self.sample_rate = self.frontend.sample_rate

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu", **options) -> VAEBSS:
        """Load a VAE checkpoint (`load_prior`) as a method; `options` as the constructor's.

        Raises:
            UserError: as `load_prior`; a checkpoint of another kind; a VAE of another domain.
        """
        model = load_prior(path, device=device)
        if model.kind != "vae":
            raise UserError(f"{path}: a {model.kind} checkpoint, not a VAE (audiosep train vae --data)")
        try:
            return cls(model, **options)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None

    def slot_shares(self, magnitude: Tensor) -> tuple[Tensor, Tensor, PatchLayout]:
        """Per-patch VAEM shares of a mono magnitude spectrogram `(F, T)`.

        Returns:
            (shares `(B, K, 1, F, P)`, summing to 1 over K; the decoded slots `(B, K, 1, F, P)`
            in [0, 1] (patch units); the `PatchLayout` for `masks`).
        """
        patches, layout = patchify(magnitude, self.frontend.patch_frames, self.hop_frames)
        decoded = decode_slots(self.model, self.frontend.normalise(patches)[0], self.batch_size)
        return vaem_shares(decoded), decoded, layout

    @staticmethod
    def masks(shares: Tensor, layout: PatchLayout) -> Tensor:
        """Per-patch shares `(B, K, 1, F, P)` → masks `(K, F, T)` by overlap-add; Σₖ = 1 in every bin."""
        return unpatchify(shares.transpose(0, 1), *layout)

    def apply(self, masks: Tensor, spec: Tensor, length: int) -> Tensor:
        """Masks `(K, F, T)` on the mixture's STFT `(C, F, T)` → stems `(K, C, length)`."""
        return self.frontend.istft(masks[:, None] * spec[None], length)

    def __call__(self, mix: Tensor) -> Tensor:
        """Mixture `(C, N)` at `sample_rate` → stems `(K, C, N)` (mix's dtype and device)."""
        spec = self.frontend.stft(mix)
        shares, decoded, layout = self.slot_shares(spec.mean(dim=0).abs())
        if self.align:
            shares = permute_slots(shares, align_slots(slot_features(decoded)))
        return self.apply(self.masks(shares, layout), spec, mix.shape[-1]).to(mix.dtype)
