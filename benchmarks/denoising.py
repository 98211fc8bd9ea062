"""Denoising deep generative models: does noise in training help sample quality? One table.

    python benchmarks/denoising.py --images digits --vae vanilla=v.pt nd=nd.pt cd=cd.pt
    python benchmarks/denoising.py --images mnist:../shared/data/mnist --vae ...

Each checkpoint is a plain VAE (K = 1) trained by `audiosep train vae` with the denoising
mode stored in it (`denoising:` of its config): vanilla, ND (noise σ in training), CD
(σ ~ U(0, C) as an input). Rows:
- `<name>`: `--samples` draws of the model (CD at σ = 0);
- `<name>+TD` for ND models: the same draws denoised once by Tweedie's formula at the
  training σ (`priors.denoising.tweedie_denoise`, the score being ∇ₓ of the model's ELBO);
- `data (train images)`: real images, the floor of the distance.

Columns: the Fréchet distance between classifier features of the draws and of the test
images (`eval.frechet`: a small CNN trained here on the train split with `--seed`; not
FID, and comparable only within one run), and the test ELBO in nats per image of the
density each model learnt (vanilla / CD at σ = 0 on the test images; ND on the test images
plus N(0, σ²) noise), Laplace normalising constant included. The classifier's test
accuracy is printed above the table.
"""
from __future__ import annotations

import argparse
import math

import torch

from audiosep.data.images import load_images
from audiosep.eval.frechet import accuracy, feature_statistics, fit_classifier, frechet_distance
from audiosep.priors.base import load_checkpoint, load_prior
from audiosep.priors.denoising import DenoisingConfig, training_noise, tweedie_denoise
from audiosep.priors.vae import LAPLACE_SCALE, vae_loss
from images import named_paths  # benchmarks/images.py (this folder is on sys.path when run as a script)


def stored_denoising(path: str) -> DenoisingConfig:
    """The denoising settings a checkpoint was trained with (vanilla when none are stored)."""
    stored = load_checkpoint(path)["extra"].get("data", {}).get("denoising")
    return DenoisingConfig(**stored) if stored else DenoisingConfig()


@torch.no_grad()
def test_elbo(model, images: torch.Tensor, denoising: DenoisingConfig, seed: int) -> float:
    """Mean ELBO (nats/image) of the density the model learnt, on the test images."""
    torch.manual_seed(seed)
    sigma = None  # the σ input of a σ-conditioned (CD) model: clean test images
    if denoising.mode in ("nd", "td"):
        images, _ = training_noise(images, denoising)  # an ND model's density is that of noisy data
    elif denoising.mode == "cd":
        sigma = 0.0
    loss = torch.cat([vae_loss(model, x, 1.0, sigma=sigma, reduce=False) for x in images.split(1000)])
    return float(-loss.mean()) - images[0].numel() * math.log(2 * LAPLACE_SCALE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="digits")
    parser.add_argument("--vae", nargs="+", required=True, metavar="NAME=PATH")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train, test = load_images(args.images, "train"), load_images(args.images, "test")
    classifier = fit_classifier(train.images, train.labels, steps=args.classifier_steps, seed=args.seed)
    print(f"{train.name}: feature classifier test accuracy {accuracy(classifier, test.images, test.labels):.4f} "
          f"({args.classifier_steps} steps, seed {args.seed}); {args.samples} draws per row")
    reference = feature_statistics(classifier, test.images)

    def distance(images: torch.Tensor) -> float:
        return frechet_distance(*feature_statistics(classifier, images.clamp(0, 1)), *reference)

    rows = [("data (train images)", distance(train.images[: args.samples]), float("nan"))]
    for name, path in named_paths(args.vae):
        model, denoising = load_prior(path), stored_denoising(path)
        if model.n_sources != 1:
            raise SystemExit(f"{path}: a VAE-BSS model (K = {model.n_sources}); this table is for plain VAEs")
        generator = torch.Generator().manual_seed(args.seed)
        draws = model.sample(args.samples, sigma=0.0, generator=generator)
        label = f"{name} ({denoising.mode}" + (f", sigma {denoising.sigma:g})" if denoising.mode in ("nd", "td")
                                               else f", C {denoising.c_max:g})" if denoising.mode == "cd" else ")")
        elbo = test_elbo(model, test.images, denoising, args.seed)
        rows.append((label, distance(draws), elbo))
        if denoising.mode in ("nd", "td"):
            denoised = torch.cat([tweedie_denoise(model, x, denoising.sigma) for x in draws.split(1000)])
            rows.append((f"{name}+TD", distance(denoised), elbo))
    print(f"\n{'model':<34} {'Frechet dist.':>13} {'test ELBO nats/img':>19}")
    for label, fd, elbo in rows:
        print(f"{label:<34} {fd:13.3f} {elbo:19.1f}")


if __name__ == "__main__":
    main()
