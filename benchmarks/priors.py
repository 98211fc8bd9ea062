"""Per-σ diagnostics of mel priors: how well each prior denoises, and whether it tells its own
source from the other, on the training timbre and on a timbre it never saw.

    python benchmarks/priors.py --data fluidr3:data/piano_violin unseen:data/piano_violin_timgm
    python benchmarks/priors.py --priors piano.pt violin.pt --data ... --split valid --patches 128
    python benchmarks/priors.py --priors p_ft.pt v_ft.pt --sources piano violin --data ...

For every prior (default: the bundled NCSN priors), every data set (TAG:FOLDER, a stems
dataset), every source's patches (`--patches` fixed crops of the split, mono, the prior's front
end) and every σ of a geometric grid, clean patches x get Gaussian noise x̃ = x + σε and the
prior's Tweedie estimate x̂ = x̃ + σ²·s(x̃, σ) is compared with x:

- `gain dB` = 10·log10(‖x̃ − x‖² / ‖x̂ − x‖²): the noise the prior removes (0 dB: none; the
  gain of the ideal denoiser grows as σ grows). Its drop from the training timbre to the unseen
  one is the prior's generalisation gap at that σ.
- `own − other dB`: the piano prior's gain on piano patches minus its gain on violin patches
  (and the violin prior's the other way round). BASIS can only assign energy to the right
  source where this is positive: a prior that denoises the other source as well as its own
  does not discriminate at that σ.

No separation runs here: it isolates the priors from the sampler and the inversion. Torch
runs on one thread; every (prior, data set, source) sees the same patches and noise.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from audiosep.errors import UserError, run_reporting_user_errors
from audiosep.priors.base import load_prior
from audiosep.priors.denoising import tweedie_denoise
from audiosep.spectral.frontend import Frontend
from audiosep.training.mel import mel_patches
from audiosep.zoo import bundled


def denoising_gains(prior, patches: torch.Tensor, sigmas: list[float], seed: int, batch: int = 32) -> list[float]:
    """Tweedie denoising gain in dB of `prior` on `patches` `(P, 1, n_mels, frames)` at each σ."""
    gains = []
    for sigma in sigmas:
        g = torch.Generator().manual_seed(seed)
        noise_err, out_err = 0.0, 0.0
        for start in range(0, patches.shape[0], batch):
            x = patches[start:start + batch]
            noisy = x + sigma * torch.randn(x.shape, generator=g)
            with torch.no_grad():
                estimate = tweedie_denoise(prior, noisy, sigma)
            noise_err += (noisy - x).double().square().sum().item()
            out_err += (estimate - x).double().square().sum().item()
        gains.append(10 * np.log10(noise_err / max(out_err, 1e-30)))
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--priors", type=Path, nargs="+", default=bundled("basis"),
                        help="one mel prior per source, named after the files (default: the bundled NCSN priors)")
    parser.add_argument("--sources", nargs="+", help="the priors' source names, in order (default: the files' stems)")
    parser.add_argument("--data", nargs="+", required=True, metavar="TAG:FOLDER", help="stems datasets")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--patches", type=int, default=128, help="patches per source and data set")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, help="also write the table as CSV")
    args = parser.parse_args()
    torch.set_num_threads(1)

    names = args.sources or [p.stem for p in args.priors]
    if len(names) != len(args.priors):
        raise UserError(f"--sources names {len(names)} sources for {len(args.priors)} priors")
    priors = {name: load_prior(p) for name, p in zip(names, args.priors)}
    sources = list(priors)
    frontend = Frontend.from_dict(next(iter(priors.values())).domain.frontend_dict)
    rows = []
    for spec in args.data:
        tag, folder = spec.split(":", 1)
        for source in sources:
            ds = mel_patches(folder, source, frontend, args.split, args.patches, args.seed)
            patches = torch.stack([ds[i] for i in tqdm(range(len(ds)), desc=f"{tag} {source} patches", leave=False)])
            for name, prior in priors.items():
                gains = denoising_gains(prior, patches, args.sigmas, args.seed)
                rows += [{"data": tag, "prior": name, "patches": source, "sigma": s, "gain dB": v}
                         for s, v in zip(args.sigmas, gains)]
    table = pd.DataFrame(rows)
    gain = table.pivot_table(index=["data", "prior", "patches"], columns="sigma", values="gain dB")
    pd.set_option("display.width", 200)
    print("Tweedie denoising gain (dB) per σ:")
    print(gain.round(2).to_string())
    own = []
    for (tag, name), group in table.groupby(["data", "prior"], sort=False):
        by = group.set_index(["patches", "sigma"])["gain dB"]
        other = [s for s in sources if s != name]
        diff = by.loc[name] - by.loc[other].groupby("sigma").mean()
        own.append(pd.Series(diff.values, index=diff.index, name=(tag, name)))
    print("\nown − other source (dB): how much better each prior denoises its own source")
    print(pd.DataFrame(own).round(2).to_string())
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.output, index=False)


if __name__ == "__main__":
    run_reporting_user_errors(main, "priors.py")
