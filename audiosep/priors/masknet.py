"""Supervised mask network: the default separation (`audiosep separate`), and the start of BASIS.

A `MaskNet` reads the channel-mean STFT magnitude of a mixture `(C, N)`, frame by frame:
log-magnitude (so a gain on the input is an additive constant), layer-normalised over
frequency (so that constant is gone: the masks do not depend on the input level), a linear
layer to `hidden` features, a bidirectional LSTM over time and a linear layer to K masks per
bin, a softmax over the K sources (the masks sum to one, so the stems sum to the mixture).
The masks multiply every channel's complex STFT, which is inverted with the mixture's
phase. This is open-unmix's design (a BiLSTM over frames) for K sources at once; the
softmax over sources replaces its per-target networks, since here every source is predicted.

Training (`training.masknet`) minimises the phase-sensitive error ‖Mₖ·X − Sₖ‖² relative to
‖X‖² (`masknet_loss`): the complex error of the masked mixture against each true source's
STFT, which is what SDR measures, where a magnitude error would ignore phase.

The model is a registered `Prior` kind ("masknet") only so that the one training loop and the
self-describing checkpoints serve it (it lives in `priors/` beside the VAE-BSS model for the
same reason); it has no score. Its domain is `Domain.waveform(rate)`:
it takes waveforms at its rate and carries its STFT settings in its config.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..data.stems import separable_sources
from ..devices import resolve_device
from ..errors import UserError
from ..spectral.stft import STFTSettings
from .base import Domain, Prior, load_prior, register_prior

LOG_FLOOR = 1e-5  # magnitude floor of the log features (a −100 dB bin reads as −100 dB, not −∞)


@register_prior("masknet")
class MaskNet(Prior):
    """K soft masks from a mixture's STFT magnitude (see the module doc).

    Args:
        sources: K source names, in the order of the outputs.
        sample_rate: Hz of the waveforms it separates.
        n_fft, hop_length: STFT size and hop (samples, Hann window).
        hidden: features per frame; the BiLSTM has hidden // 2 units per direction.
        layers: BiLSTM layers.
        level_db: RMS (dBFS) `Separator` scales inputs to (the training mixtures' median;
            the masks do not depend on it, the clipping headroom does).
    """

    def __init__(self, sources: Sequence[str] = ("piano", "violin"), sample_rate: int = 16000, n_fft: int = 1024,
                 hop_length: int = 256, hidden: int = 256, layers: int = 2, level_db: float | None = None,
                 domain: Domain | None = None) -> None:
        super().__init__(domain)
        sources = separable_sources(sources, "a mask network")
        if hidden < 2 or hidden % 2 or layers < 1:
            raise UserError(f"mask network: hidden must be even and >= 2, layers >= 1; got {hidden}, {layers}")
        self.sources, self.sample_rate = tuple(sources), int(sample_rate)
        self.n_fft, self.hop_length, self.hidden, self.layers = int(n_fft), int(hop_length), int(hidden), int(layers)
        self.level_db = level_db
        self.stft_settings = STFTSettings(self.n_fft, self.hop_length, pad_mode="reflect", sample_rate=self.sample_rate)
        self.channels = None  # any channel count: the masks come from the channel mean
        n_freqs = self.stft_settings.n_freqs
        self.norm = nn.LayerNorm(n_freqs)
        self.encode = nn.Sequential(nn.Linear(n_freqs, self.hidden), nn.LayerNorm(self.hidden), nn.Tanh())
        self.lstm = nn.LSTM(self.hidden, self.hidden // 2, num_layers=self.layers, batch_first=True,
                            bidirectional=True)
        self.decode = nn.Linear(2 * self.hidden, len(self.sources) * n_freqs)

    def get_config(self) -> dict[str, Any]:
        return {"sources": list(self.sources), "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                "hop_length": self.hop_length, "hidden": self.hidden, "layers": self.layers,
                "level_db": self.level_db}

    def spectrum(self, x: Tensor) -> Tensor:
        """Complex STFT `(..., F, T)` of waveforms `x (..., N)` at the model's settings."""
        return self.stft_settings.stft(x)

    def masks(self, magnitude: Tensor) -> Tensor:
        """Soft masks `(B, K, F, T)` summing to one over K, from magnitudes `(B, F, T)`."""
        features = self.norm((magnitude.clamp_min(LOG_FLOOR)).log().transpose(1, 2))  # (B, T, F)
        hidden = self.encode(features)
        hidden = torch.cat([hidden, self.lstm(hidden)[0]], dim=-1)  # skip connection around the LSTM
        B, T, _ = hidden.shape
        logits = self.decode(hidden).view(B, T, len(self.sources), -1)
        return logits.softmax(dim=2).permute(0, 2, 3, 1)

    def forward(self, mix: Tensor) -> Tensor:
        """Stems `(K, C, N)` of a mixture `(C, N)` at `sample_rate` (mixture phase, stems summing to it)."""
        return separate_masknet(mix, self)


class MaskNetBag(nn.Module):
    """Several mask networks of the same sources, rate and STFT used as one: the mean of their
    masks, which still sums to one over the sources. A bag of models (demucs bundles them):
    networks trained apart err apart, so their mean errs less. It separates as a `MaskNet`
    does (`separate_masknet`), with the first member's level_db."""

    def __init__(self, members: Sequence[MaskNet]) -> None:
        super().__init__()
        if not members:
            raise UserError("a bag of mask networks needs at least one network")
        first = members[0]
        for other in members[1:]:
            if (other.sources, other.sample_rate, other.n_fft, other.hop_length) != (
                    first.sources, first.sample_rate, first.n_fft, first.hop_length):
                raise UserError("a bag of mask networks needs one sources, rate and STFT: "
                                f"{', '.join(first.sources)} at {first.sample_rate} Hz, n_fft {first.n_fft}, "
                                f"hop {first.hop_length}, against {', '.join(other.sources)} at "
                                f"{other.sample_rate} Hz, n_fft {other.n_fft}, hop {other.hop_length}")
        self.members = nn.ModuleList(members)
        self.sources, self.sample_rate, self.level_db = first.sources, first.sample_rate, first.level_db
        self.n_fft, self.stft_settings, self.domain = first.n_fft, first.stft_settings, first.domain
        self.spectrum = first.spectrum

    def masks(self, magnitude: Tensor) -> Tensor:
        """The members' mean soft masks `(B, K, F, T)` from magnitudes `(B, F, T)`."""
        return torch.stack([member.masks(magnitude) for member in self.members]).mean(dim=0)

    def forward(self, mix: Tensor) -> Tensor:
        """Stems `(K, C, N)` of a mixture `(C, N)`, as `MaskNet.forward`."""
        return separate_masknet(mix, self)


def separate_masknet(mix: Tensor, model: MaskNet | MaskNetBag) -> Tensor:
    """Separate a mixture `(C, N)` with `model`'s masks (computed once from the channel mean,
    applied to every channel): stems `(K, C, N)`, mix's dtype and device."""
    if mix.dim() != 2 or mix.shape[-1] == 0:
        raise UserError(f"the mask network separates (channels, samples) mixtures, got shape {tuple(mix.shape)}")
    n = mix.shape[-1]
    pad = max(0, model.n_fft - n)  # the STFT's reflection padding needs n_fft samples
    x = torch.nn.functional.pad(mix.float(), (0, pad))
    spectra = model.spectrum(x)  # (C, F, T)
    with torch.no_grad():
        masks = model.masks(spectra.abs().mean(dim=0, keepdim=True))[0]  # (K, F, T)
    stems = model.stft_settings.istft(masks[:, None] * spectra[None], x.shape[-1])
    return stems[..., :n].to(mix.dtype)


def masknet_loss(model: MaskNet, sources: Tensor) -> Tensor:
    """The phase-sensitive training loss of sources `(B, K, N)` (mono crops, mixed here as
    their sum): Σₖ‖Mₖ·X − Sₖ‖² / ‖X‖² per item, averaged over the batch (scalar)."""
    spectra = model.spectrum(sources)  # (B, K, F, T)
    mixture = spectra.sum(dim=1)
    masks = model.masks(mixture.abs())
    error = (masks * mixture[:, None] - spectra).abs().pow(2).sum(dim=(1, 2, 3))
    return (error / mixture.abs().pow(2).sum(dim=(1, 2)).clamp_min(1e-12)).mean()


def load_masknet(path: str | os.PathLike, device: str | torch.device = "cpu") -> MaskNet:
    """The mask network checkpoint at `path`, in eval mode on `device`.

    Raises:
        UserError: an unknown device, as `load_prior` (missing, foreign, corrupt), or a
            checkpoint of another kind.
    """
    model = load_prior(path, device=resolve_device(device))
    if model.kind != "masknet":
        raise UserError(f"{path}: a {model.kind} checkpoint, not a mask network (train masknet)")
    return model.eval()


def load_masknets(paths: Sequence[str | os.PathLike], device: str | torch.device = "cpu") -> MaskNet | MaskNetBag:
    """One mask network checkpoint (`load_masknet`), or several as a `MaskNetBag`.

    Raises:
        UserError: as `load_masknet`, or networks of other sources, rates or STFTs.
    """
    models = [load_masknet(path, device) for path in paths]
    return models[0] if len(models) == 1 else MaskNetBag(models).eval()
