"""VAE-BSS inference (Neri, Badeau & Depalle, EUSIPCO 2021): encode the mixture, decode
its K latents with the shared decoder, and optionally mask the mixture by them (VAEM).

- `vae_separate(model, mixtures)`: deterministic (z = μ; the earlier code sampled z at
  evaluation, so two runs gave two answers), in eval mode, batched.
- `vaem_mask(sources, mixture)`: šₖ = ŝₖ · m / Σⱼ ŝⱼ over **all** K outputs (the earlier
  code normalised over 2 of K after its permutation), so Σₖ šₖ = m wherever Σⱼ ŝⱼ > 0;
  where every output is 0 the mixture is shared equally, so the sum still holds.

Scale: the model reconstructs the mixture as Σₖ ŝₖ. With the mean mixing it was trained
on, m = Σⱼ xⱼ / J, each output estimates xⱼ / J: `vae_separate(..., n_mix=J)` multiplies
by J, so estimates are in the sources' own units (a digit in [0, 1]).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..priors.vae import VAE


def vaem_mask(sources: Tensor, mixture: Tensor) -> Tensor:
    """Masked sources `(B, K, ...)`: ŝₖ·m / Σⱼ ŝⱼ (m / K where Σⱼ ŝⱼ = 0), for `sources (B, K, ...)`
    and `mixture (B, ...)`; they sum to the mixture exactly over the K outputs."""
    total = sources.sum(dim=1, keepdim=True)
    share = torch.where(total > 0, sources / total.clamp_min(torch.finfo(sources.dtype).tiny),
                        torch.full_like(sources, 1.0 / sources.shape[1]))
    return share * mixture.unsqueeze(1)


@torch.no_grad()
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
    was_training = model.training
    model.eval()
    try:
        parts = []
        for chunk in mixtures.split(batch_size):
            mu, _ = model.encode(chunk)
            sources = model.decode(mu)
            parts.append(vaem_mask(sources, chunk) if mask else sources)
    finally:
        model.train(was_training)
    return torch.cat(parts) * n_mix
