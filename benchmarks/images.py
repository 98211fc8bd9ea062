"""Image-domain separation: one table of PSNR / SSIM on fixed test mixtures.

    python benchmarks/images.py --images mnist:MNIST_DIR \
        --vae K2=exp/vae_mnist_k2.pt K3=exp/vae_mnist_k3.pt --ncsn exp/ncsn_mnist.pt
    python benchmarks/images.py --images digits --vae K2=vae_digits.pt      # minutes, no download

Mixtures: `--mixtures` pairs of distinct test-split images (default 1000), drawn with
`--seed` by `data.images.image_mixtures`, the same pairs for every method. Each method
sees the mixture in its own convention: BASIS-NCSN the sum m = x₁ + x₂ on [0, 1] (the
paper's NCSN path), VAE-BSS the mean (what it was trained on). Every estimate is scored in
the sources' own units (a digit in [0, 1]) against the true digits: PSNR = −10·log10(MSE)
per image, best assignment of estimates to sources per mixture (K = 3 models: the best 2
of their 3 outputs), averaged over the two sources, then over mixtures; SSIM alike (NaN for
images under 11×11, e.g. the 8×8 digits: its window does not fit).

Rows: `mixture-average` (both estimates = the average of the two digits: what a method
that does not separate scores), `vae-<name>` (decoder outputs), `vaem-<name>` (the
mixture masked by them, over all K outputs), `basis-ncsn` (annealed Langevin, the
paper's schedule unless `--basis-steps/--basis-levels` shorten it). Seconds are wall
seconds of separation on `--threads` threads (CPU unless `--device cuda`).

Scale note: the VAE-BSS reference code compares its outputs with digit/2 (its mixture is
the mean); PSNR on that half scale is exactly 20·log10 2 = 6.02 dB higher than on the
digits' own scale used here. The table prints both for the VAE rows.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from audiosep.data.images import image_mixtures, load_images
from audiosep.devices import resolve_device
from audiosep.errors import run_reporting_user_errors
from audiosep.eval.metrics import image_separation_scores
from audiosep.priors.base import Domain, load_prior
from audiosep.separation.basis import BasisConfig, basis_separate, fit_schedule
from audiosep.separation.mixing import LinearMixing
from audiosep.separation.vae_bss import vae_separate

HALF_SCALE_DB = 20 * math.log10(2)


def named_paths(items: list[str]) -> list[tuple[str, str]]:
    """NAME=PATH items (a bare PATH is named by its position)."""
    return [tuple(item.split("=", 1)) if "=" in item else (str(i + 1), item) for i, item in enumerate(items)]


def basis_rows(path: str, domain: Domain, mixtures: torch.Tensor, mixing: LinearMixing, config: BasisConfig,
               batch: int, device) -> torch.Tensor:
    """BASIS with one prior for both sources; estimates `(M, 2, C, H, W)` in the prior's units."""
    prior = load_prior(path, expected_domain=domain, device=device)
    config = fit_schedule(config, [prior])
    parts = []
    for chunk in tqdm(mixtures.split(batch), desc="mixture batches", unit="batch"):
        out = basis_separate([prior, prior], chunk.to(device), mixing, config, progress=True)
        parts.append(out.transpose(0, 1).cpu())
    return torch.cat(parts)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'method':<22} {'PSNR dB':>8} {'SSIM':>6} {'PSNR half-scale':>16} {'seconds':>8}")
    for r in rows:
        half = f"{r['psnr'] + HALF_SCALE_DB:16.2f}" if r["method"].startswith("vae") else f"{'':>16}"
        print(f"{r['method']:<22} {r['psnr']:8.2f} {r['ssim']:6.3f} {half} {r['seconds']:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="digits", help="image dataset spec (digits, mnist:DIR, a folder)")
    parser.add_argument("--mixtures", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae", nargs="*", default=[], metavar="NAME=PATH", help="VAE-BSS checkpoints")
    parser.add_argument("--ncsn", help="an NCSN image prior for BASIS (one prior for both sources)")
    parser.add_argument("--glow", help="a flow image prior (centred images; sigma-conditioned or a bundle) for BASIS")
    parser.add_argument("--basis-steps", type=int, default=100, help="Langevin steps per level (paper: 100)")
    parser.add_argument("--basis-levels", type=int, default=10, help="noise levels 1 → 0.01 (paper: 10)")
    parser.add_argument("--basis-delta", type=float, default=3e-5, help="step size δ (paper, images: 3e-5)")
    parser.add_argument("--batch", type=int, default=250, help="mixtures per BASIS batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    test = load_images(args.images, "test")
    sum_mix, sources = image_mixtures(test.images, args.mixtures, 2, seed=args.seed, mixing="sum")
    mean_mix = sum_mix / 2
    domain = Domain.image(test.shape, (0.0, 1.0))
    print(f"{test.name}: {args.mixtures} test mixtures of 2 images {test.shape}, seed {args.seed}")

    rows = []

    def score(method: str, estimates: torch.Tensor, seconds: float) -> None:
        s = image_separation_scores(sources, estimates)
        rows.append({"method": method, "psnr": float(np.mean(s["psnr"])), "ssim": float(np.nanmean(s["ssim"]))
                     if np.isfinite(s["ssim"]).any() else float("nan"), "seconds": seconds})

    score("mixture-average", mean_mix[:, None].expand(-1, 2, -1, -1, -1), 0.0)
    for name, path in named_paths(args.vae):
        model = load_prior(path, expected_domain=domain, device=device)
        for mask in (False, True):
            t0 = time.perf_counter()
            est = vae_separate(model, mean_mix.to(device), mask=mask, n_mix=2).cpu()
            score(f"{'vaem' if mask else 'vae'}-{name} (K={model.n_sources})", est, time.perf_counter() - t0)
    schedule = dict(delta=args.basis_delta, steps_per_level=args.basis_steps, n_levels=args.basis_levels,
                    seed=args.seed)
    if args.ncsn:  # the paper's NCSN path: m = x1 + x2 on [0, 1], Jacobi, exact gradient, U(0, 1) start
        t0 = time.perf_counter()
        est = basis_rows(args.ncsn, domain, sum_mix, LinearMixing((1.0, 1.0)), BasisConfig(**schedule),
                         args.batch, device)
        score(f"basis-ncsn ({args.basis_levels}x{args.basis_steps})", est, time.perf_counter() - t0)
    if args.glow:  # the paper's Glow path: m = (x1 + x2)/2 on [-0.5, 0.5], Gauss-Seidel, residual gradient
        t0 = time.perf_counter()
        config = BasisConfig(**schedule, update="gauss-seidel", grad_factor=1, init="mixture", clamp=(-0.5, 0.5))
        est = basis_rows(args.glow, Domain.image(test.shape, (-0.5, 0.5)), mean_mix - 0.5, LinearMixing((0.5, 0.5)),
                         config, args.batch, device)
        score(f"basis-glow ({args.basis_levels}x{args.basis_steps})", est + 0.5, time.perf_counter() - t0)
    print_table(rows)


if __name__ == "__main__":
    run_reporting_user_errors(main, "images.py")
