"""Denoising deep generative models: does noise in training help sample quality? One table.

    python benchmarks/denoising.py --images digits --vae vanilla=v.pt nd=nd.pt cd=cd.pt \
        --flow vanilla=fv.pt nd=fnd.pt cd=fcd.pt
    python benchmarks/denoising.py --images mnist:MNIST_DIR --vae ... --flow ...

Models (`--vae` and/or `--flow`, NAME=PATH each), with the denoising mode stored in each
checkpoint (`denoising:` of its config, `extra["data"]["denoising"]`): vanilla, ND (noise σ
in training), CD (σ ~ U(0, C) as an input).
- `--vae`: plain VAEs (K = 1) trained by `audiosep train vae`, on images in [0, 1].
- `--flow`: Glow / RealNVP trained by `audiosep train glow|realnvp --images`, on images
  centred to [−0.5, 0.5] and dequantised within their 8-bit bins: vanilla is an
  unconditional flow of those images (plus N(0, s²) noise at its model noise_sigma s; the
  recipe's vanilla configs set s = 0), ND one at the section's σ, CD a flow with σ/C as an
  input (sigma_scale "linear"). Draws are shifted back to [0, 1] before anything is scored.

Rows, `vae-<name>` and `flow-<name>`:
- `<kind>-<name>`: `--samples` draws of the model (CD at σ = 0; flows at temperature 1);
- `<kind>-<name>+TD` for ND models: the same draws denoised once by Tweedie's formula at the
  training σ (`priors.denoising.tweedie_denoise`, in the model's own space: the score being
  ∇ₓ of the VAE's ELBO, or of the flow's exact log-density of the centred image);
- `data (train images)`: real images, the floor of the distance.

Columns: the Fréchet distance between classifier features of the draws and of the test
images (`eval.frechet`: a small CNN trained here on the train split with `--seed`; not
FID, and comparable only within one run), and the mean test log-likelihood in nats per
image: for VAEs the ELBO of the [0, 1]-scale image (a lower bound on a continuous density;
Laplace normalising constant included), for flows the log-probability of the 8-bit image
(`test_log_likelihood`: exact log p of the dequantised image − D·ln 256, a lower bound).
Which test inputs: ND (both kinds) the test images plus N(0, σ²) noise, drawn with `--seed`
(the same noise for a VAE and a flow of the same σ); CD at σ = 0 and vanilla on the clean
test images (vanilla flows with noise_sigma s > 0: plus that noise). Densities of clean and
of noisy images are not on one footing, nor a VAE's continuous ELBO and a flow's discrete
log-probability: compare a column entry only with rows of its kind that score the same
test inputs. The classifier's test accuracy is printed above the table.
"""
from __future__ import annotations

import argparse
import math

import torch

from audiosep.data.images import load_images
from audiosep.errors import run_reporting_user_errors
from audiosep.eval.frechet import accuracy, feature_statistics, fit_classifier, frechet_distance
from audiosep.priors.base import Domain, load_checkpoint, load_prior
from audiosep.priors.denoising import DenoisingConfig, training_noise, tweedie_denoise
from audiosep.priors.flows import FlowBundle, dequantize
from audiosep.priors.vae import LAPLACE_SCALE, vae_loss
from images import named_paths  # benchmarks/images.py (this folder is on sys.path when run as a script)

FLOW_RANGE = (-0.5, 0.5)  # flows model images centred by −0.5 (`training.flow.train_flow` on `Images`)
FLOW_CHUNK = 250  # images per flow forward / Tweedie pass (autograd through the whole flow)


def stored_denoising(path: str) -> DenoisingConfig:
    """The denoising settings a checkpoint was trained with (vanilla when none are stored)."""
    stored = load_checkpoint(path)["extra"].get("data", {}).get("denoising")
    return DenoisingConfig(**stored) if stored else DenoisingConfig()


@torch.no_grad()
def test_elbo(model, images: torch.Tensor, denoising: DenoisingConfig, seed: int) -> float:
    """Mean ELBO (nats/image) of the density the VAE learnt, on the test images `(N, C, H, W)` in [0, 1]."""
    torch.manual_seed(seed)
    sigma = None  # the σ input of a σ-conditioned (CD) model: clean test images
    if denoising.mode in ("nd", "td"):
        images, _ = training_noise(images, denoising)  # an ND model's density is that of noisy data
    elif denoising.mode == "cd":
        sigma = 0.0
    loss = torch.cat([vae_loss(model, x, 1.0, sigma=sigma, reduce=False) for x in images.split(1000)])
    return float(-loss.mean()) - images[0].numel() * math.log(2 * LAPLACE_SCALE)


@torch.no_grad()
def test_log_likelihood(model, images: torch.Tensor, bins: int, seed: int) -> float:
    """Mean log-likelihood (nats/image) of the 8-bit test images `(N, C, H, W)` in [0, 1] under
    the flow (trained on images dequantised into `bins` bins per pixel): log p of the test
    images dequantised once (uniform noise within each pixel's bin) − D·ln(bins), an unbiased
    estimate of a lower bound on the discrete log-probability (Jensen). CD is scored at σ = 0;
    an unconditional flow with training noise N(0, s²) (ND) on the dequantised images plus
    that noise, drawn first on a generator seeded with `seed` (the noise `test_elbo` draws for
    an ND VAE of that σ)."""
    generator = torch.Generator().manual_seed(seed)
    x = images + FLOW_RANGE[0]
    noise = 0.0
    sigma = 0.0 if model.conditional else None
    if not model.conditional and model.noise_sigma > 0:
        noise = model.noise_sigma * torch.randn(x.shape, generator=generator)
    x = dequantize(x, bins, FLOW_RANGE[0], generator) + noise
    log_p = torch.cat([model.log_prob(part, sigma) for part in x.split(FLOW_CHUNK)])
    return float(log_p.mean()) - x[0].numel() * math.log(bins)


def stored_bins(path: str) -> int:
    """The dequantisation bins an image flow was trained with; SystemExit for a flow trained
    without (before `train_flow` dequantised images: its density is not bounded)."""
    bins = load_checkpoint(path)["extra"].get("data", {}).get("dequantized")
    if not bins:
        raise SystemExit(f"{path}: an image flow trained without dequantisation; retrain it "
                         "(audiosep train glow --images ...) to score its log-likelihood")
    return int(bins)


def label(kind: str, name: str, denoising: DenoisingConfig) -> str:
    """The row label, e.g. "flow-nd (nd, sigma 0.1)"."""
    if denoising.mode in ("nd", "td"):
        return f"{kind}-{name} ({denoising.mode}, sigma {denoising.sigma:g})"
    if denoising.mode == "cd":
        return f"{kind}-{name} (cd, C {denoising.c_max:g})"
    return f"{kind}-{name} (none)"


def load_vaes(specs: list[str], shape: tuple[int, ...]) -> list[tuple[str, torch.nn.Module, DenoisingConfig]]:
    """(name, plain VAE, its denoising settings) per NAME=PATH; SystemExit for a VAE-BSS model
    or one of other images than `shape`."""
    loaded = []
    for name, path in named_paths(specs):
        model = load_prior(path, expected_domain=Domain.image(shape))
        if model.n_sources != 1:
            raise SystemExit(f"{path}: a VAE-BSS model (K = {model.n_sources}); this table is for plain VAEs")
        loaded.append((name, model, stored_denoising(path)))
    return loaded


def load_flows(specs: list[str], shape: tuple[int, ...]) -> list[tuple[str, torch.nn.Module, DenoisingConfig, int]]:
    """(name, image flow, its denoising settings, its dequantisation bins) per NAME=PATH;
    SystemExit for a BASIS flow (a bundle or a log-σ conditioned flow), one of other images
    than `shape`, or one trained without dequantisation."""
    loaded = []
    for name, path in named_paths(specs):
        model, denoising = load_prior(path, expected_domain=Domain.image(shape, FLOW_RANGE)), stored_denoising(path)
        if isinstance(model, FlowBundle) or model.conditional != denoising.conditioned:
            raise SystemExit(f"{path}: a BASIS flow (bundle or log-sigma conditioned); this table is for flows "
                             "trained with a denoising: section or none")
        loaded.append((name, model, denoising, stored_bins(path)))
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="digits")
    parser.add_argument("--vae", nargs="+", default=[], metavar="NAME=PATH", help="plain VAEs (train vae)")
    parser.add_argument("--flow", nargs="+", default=[], metavar="NAME=PATH",
                        help="Glow / RealNVP image flows (train glow|realnvp --images)")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.vae and not args.flow:
        parser.error("give --vae and/or --flow checkpoints")
    torch.set_num_threads(args.threads)

    train, test = load_images(args.images, "train"), load_images(args.images, "test")
    vaes, flows = load_vaes(args.vae, test.shape), load_flows(args.flow, test.shape)  # refused before the classifier trains
    classifier = fit_classifier(train.images, train.labels, steps=args.classifier_steps, seed=args.seed)
    print(f"{train.name}: feature classifier test accuracy {accuracy(classifier, test.images, test.labels):.4f} "
          f"({args.classifier_steps} steps, seed {args.seed}); {args.samples} draws per row")
    reference = feature_statistics(classifier, test.images)

    def distance(images: torch.Tensor) -> float:
        return frechet_distance(*feature_statistics(classifier, images.clamp(0, 1)), *reference)

    rows = [("data (train images)", distance(train.images[: args.samples]), float("nan"))]
    for name, model, denoising in vaes:
        generator = torch.Generator().manual_seed(args.seed)
        draws = model.sample(args.samples, sigma=0.0, generator=generator)
        elbo = test_elbo(model, test.images, denoising, args.seed)
        rows.append((label("vae", name, denoising), distance(draws), elbo))
        if denoising.mode in ("nd", "td"):
            denoised = torch.cat([tweedie_denoise(model, x, denoising.sigma) for x in draws.split(1000)])
            rows.append((f"vae-{name}+TD", distance(denoised), elbo))
    for name, model, denoising, bins in flows:
        generator = torch.Generator().manual_seed(args.seed)
        draws = torch.cat([model.sample(min(FLOW_CHUNK, args.samples - start), sigma=0.0, generator=generator)
                           for start in range(0, args.samples, FLOW_CHUNK)])  # centred, (samples, C, H, W)
        log_p = test_log_likelihood(model, test.images, bins, args.seed)
        rows.append((label("flow", name, denoising), distance(draws - FLOW_RANGE[0]), log_p))
        if denoising.mode in ("nd", "td"):
            denoised = torch.cat([tweedie_denoise(model, x, denoising.sigma) for x in draws.split(FLOW_CHUNK)])
            rows.append((f"flow-{name}+TD", distance(denoised - FLOW_RANGE[0]), log_p))
    print(f"\n{'model':<34} {'Frechet dist.':>13} {'test ELBO (vae) / 8-bit log P (flow), nats/img':>47}")
    for row_label, fd, log_p in rows:
        print(f"{row_label:<34} {fd:13.3f} {log_p:47.1f}")


if __name__ == "__main__":
    run_reporting_user_errors(main, "denoising.py")
