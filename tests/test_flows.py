"""Flows: exact inverses and log-determinants (against torch.autograd Jacobians), log-densities
against closed forms (scipy), scores against finite differences, noise conditioning, the
per-σ bundle, checkpoints, training and the `audiosep train glow|realnvp` command."""
import functools
import math
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.stats import multivariate_normal, norm
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from audiosep.cli import main
from audiosep.config import TrainConfig
from audiosep.errors import UserError
from audiosep.priors import Domain, load_prior, save_checkpoint
from audiosep.priors.base import load_checkpoint
from audiosep.priors.flows import (
    ActNorm,
    ChannelCoupling,
    CheckerboardCoupling,
    FlowBundle,
    FlowConfig,
    Glow,
    InvConv1x1,
    RealNVP,
    Split,
    Squeeze,
    TopPrior,
    bits_per_dim,
    build_flow,
    dequantize,
    flow_nll,
)
from audiosep.priors.ncsn import geometric_sigmas
from audiosep.separation.basis import BasisConfig, basis_separate
from audiosep.separation.mixing import LinearMixing
from audiosep.training import seed_everything, train
from audiosep.training.flow import bundle_member_path

F64 = torch.float64
COND = 32  # the σ-embedding width (flows.EMBED_DIM)


def _randomize(module, seed=0, scale=0.1):
    """Perturb every parameter (zero-initialised layers would otherwise be identities)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _tiny_flow(cls, conditional, seed=0, levels=2, depth=2):
    torch.manual_seed(seed)
    return _randomize(cls(levels=levels, depth=depth, hidden=8, conditional=conditional), seed).double().eval()


def _x(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _per_item_jacobian_logdets(fn, x):
    """log|det| of the Jacobian of each item's map, from torch.autograd; asserts items do not interact."""
    batch, dim = x.shape[0], x[0].numel()
    jac = torch.autograd.functional.jacobian(lambda t: fn(t).reshape(batch, -1), x).reshape(batch, dim, batch, dim)
    logdets = []
    for b in range(batch):
        others = [c for c in range(batch) if c != b]
        assert not jac[b][:, others].any()  # item b's outputs do not depend on the other items
        sign, logabs = torch.linalg.slogdet(jac[b, :, b])
        assert sign != 0
        logdets.append(logabs)
    return torch.stack(logdets)


# --- every layer: exact inverse, log-determinant = autograd Jacobian -------------------------

def _layers():
    torch.manual_seed(0)
    return {
        "actnorm": (ActNorm(3), (2, 3, 4, 4), False),
        "invconv": (InvConv1x1(4), (2, 4, 3, 3), False),
        "coupling": (ChannelCoupling(4, 6), (2, 4, 4, 4), False),
        "coupling-flip-odd": (ChannelCoupling(5, 6, flip=True), (2, 5, 3, 3), False),
        "coupling-sigma": (ChannelCoupling(4, 6, cond_dim=COND), (2, 4, 4, 4), True),
        "checkerboard-0": (CheckerboardCoupling(1, 6, parity=0), (2, 1, 4, 6), False),
        "checkerboard-1-sigma": (CheckerboardCoupling(2, 6, cond_dim=COND, parity=1), (2, 2, 4, 4), True),
        "squeeze": (Squeeze(), (2, 2, 4, 6), False),
    }


@pytest.mark.parametrize("name", list(_layers()))
def test_layer_inverse_and_logdet(name):
    layer, shape, conditional = _layers()[name]
    layer = _randomize(layer).double().eval()
    x = _x(shape)
    emb = _x((shape[0], COND), seed=2) if conditional else None
    y, logdet = layer(x, emb)
    assert y.shape[0] == shape[0] and y[0].numel() == x[0].numel()
    assert (layer.inverse(y, emb) - x).abs().max() < 1e-5
    expected = _per_item_jacobian_logdets(lambda t: layer(t, emb)[0], x)
    torch.testing.assert_close(logdet, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("learned, conditional", [(True, False), (True, True), (False, False)])
def test_split_and_top_prior_inverse_and_logdet(learned, conditional):
    torch.manual_seed(0)
    cond = COND if conditional else 0
    split = _randomize(Split(4, cond, learned=learned)).double()
    top = _randomize(TopPrior(4, cond, learned=learned), seed=3).double()
    x = _x((2, 4, 4, 4))
    emb = _x((2, COND), seed=2) if conditional else None

    kept, eps, logdet = split(x, emb)
    assert kept.shape == eps.shape == (2, 2, 4, 4)
    assert (split.inverse(kept, eps, emb) - x).abs().max() < 1e-5
    joint = _per_item_jacobian_logdets(lambda t: torch.cat([c.flatten(1) for c in split(t, emb)[:2]], 1), x)
    torch.testing.assert_close(logdet, joint, rtol=1e-9, atol=1e-9)

    eps, logdet = top(x, emb)
    assert (top.inverse(eps, emb) - x).abs().max() < 1e-5
    torch.testing.assert_close(logdet, _per_item_jacobian_logdets(lambda t: top(t, emb)[0], x), rtol=1e-9, atol=1e-9)


def test_actnorm_data_dependent_init_standardises_the_first_batch():
    x = (3.0 + 2.0 * _x((16, 3, 5, 5))) * torch.tensor([1.0, 0.1, 10.0], dtype=F64).view(1, 3, 1, 1)
    layer = ActNorm(3).double()
    layer.eval()
    assert torch.equal(layer(x)[0], x)  # not initialised outside training
    layer.train()
    y, _ = layer(x)
    per_channel = x.transpose(0, 1).reshape(3, -1).numpy()
    np.testing.assert_allclose(layer.bias.detach().view(3).numpy(), -per_channel.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(layer.log_scale.detach().view(3).exp().numpy(), 1 / per_channel.std(axis=1), rtol=1e-5)
    y_ch = y.transpose(0, 1).reshape(3, -1).detach()
    torch.testing.assert_close(y_ch.mean(dim=1), torch.zeros(3, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y_ch.std(dim=1, correction=0), torch.ones(3, dtype=F64), atol=1e-5, rtol=0)
    bias = layer.bias.detach().clone()
    layer(x + 5.0)  # initialised once only
    assert torch.equal(layer.bias.detach(), bias) and bool(layer.initialized)


def test_invconv_starts_as_a_rotation_with_lu_parts():
    torch.manual_seed(3)
    conv = InvConv1x1(6).double()
    w = conv.weight().detach()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=F64), atol=1e-6, rtol=0)
    sign, logabs = np.linalg.slogdet(w.numpy())
    assert logabs == pytest.approx(conv.log_s.sum().item(), abs=1e-12) and abs(logabs) < 1e-6  # |det W| = 1
    with torch.no_grad():
        conv.log_s.add_(0.3)
    assert np.linalg.slogdet(conv.weight().detach().numpy())[1] == pytest.approx(conv.log_s.sum().item(), rel=1e-12)


# --- whole models ------------------------------------------------------------------------

MODELS = [(Glow, False), (Glow, True), (RealNVP, False), (RealNVP, True)]


@pytest.mark.parametrize("cls, conditional", MODELS, ids=["glow", "glow-sigma", "realnvp", "realnvp-sigma"])
def test_model_inverse_and_logdet(cls, conditional):
    model = _tiny_flow(cls, conditional)
    x = _x((2, 1, 8, 8))
    sigma = torch.tensor([0.3, 0.05], dtype=F64) if conditional else None
    latents, logdet = model.transform(x, sigma)
    assert sum(z[0].numel() for z in latents) == 64
    assert (model.inverse(latents, sigma) - x).abs().max() < 1e-5
    expected = _per_item_jacobian_logdets(
        lambda t: torch.cat([z.flatten(1) for z in model.transform(t, sigma)[0]], 1), x)
    torch.testing.assert_close(logdet, expected, rtol=1e-9, atol=1e-9)
    # log p(x) = log N(ε; 0, I) + log|det|, with the Gaussian term from scipy
    eps = torch.cat([z.flatten(1) for z in latents], 1).detach().numpy()
    expected_lp = norm.logpdf(eps).sum(axis=1) + logdet.detach().numpy()
    np.testing.assert_allclose(model.log_prob(x, sigma).detach().numpy(), expected_lp, rtol=1e-12)


@pytest.mark.parametrize("cls, conditional", MODELS, ids=["glow", "glow-sigma", "realnvp", "realnvp-sigma"])
def test_new_flows_are_standard_normal(cls, conditional):
    # Zero-initialised couplings and priors, unset actnorms and a rotation per 1×1 conv make a
    # new flow an orthogonal map of x: log p(x) = Σ log N(xᵢ; 0, 1) and the score is −x.
    torch.manual_seed(0)
    model = cls(levels=2, depth=2, hidden=8, conditional=conditional).double().eval()
    x = _x((3, 1, 8, 16))
    lp = model.log_prob(x, 0.2).detach()
    expected = norm.logpdf(x.numpy()).reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(lp.numpy(), expected, rtol=1e-7)
    np.testing.assert_allclose(bits_per_dim(lp, 128).numpy(), -expected / (128 * math.log(2)), rtol=1e-7)
    torch.testing.assert_close(model.score(x, 0.2), -x, atol=1e-6, rtol=0)


def test_bits_per_dim_of_standard_normal_is_its_entropy_and_dequantisation_offsets():
    torch.manual_seed(0)
    model = Glow(levels=2, depth=1, hidden=4).double().eval()
    x = _x((200, 1, 8, 8))
    bpd = bits_per_dim(model.log_prob(x).detach(), 64).mean().item()
    assert bpd == pytest.approx(norm.entropy() / math.log(2), abs=0.01)  # 2.047 bits
    assert bits_per_dim(torch.tensor([-64.0]), 64, n_bins=256).item() == pytest.approx(1 / math.log(2) + 8)
    levels = torch.randint(0, 17, (1000,)).double()
    y = dequantize(levels / 16, 17)
    assert torch.equal(torch.floor(y * 17), levels) and bool((y < 1).all())
    centred = dequantize(levels / 16 - 0.5, 17, low=-0.5, generator=torch.Generator().manual_seed(3))
    again = dequantize(levels / 16 - 0.5, 17, low=-0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(centred, again) and torch.equal(torch.floor((centred + 0.5) * 17), levels)


@pytest.mark.parametrize("cls, conditional", [(Glow, True), (RealNVP, False)], ids=["glow-sigma", "realnvp"])
def test_score_is_the_finite_difference_gradient_of_log_prob(cls, conditional):
    model = _tiny_flow(cls, conditional, seed=4)
    x = 0.5 + 0.3 * _x((2, 1, 8, 8), seed=5)
    sigma = 0.1
    with torch.no_grad():  # as BASIS calls it
        score = model.score(x, sigma)
    assert not score.requires_grad and score.shape == x.shape
    h = 1e-5
    gen = torch.Generator().manual_seed(6)
    for _ in range(6):
        b, i, j = (int(torch.randint(n, (), generator=gen)) for n in (2, 8, 8))
        step = torch.zeros_like(x)
        step[b, 0, i, j] = h
        fd = (model.log_prob(x + step, sigma) - model.log_prob(x - step, sigma))[b].item() / (2 * h)
        assert score[b, 0, i, j].item() == pytest.approx(fd, rel=1e-6, abs=1e-6)
    direction = _x(x.shape, seed=7)
    fd = (model.log_prob(x + h * direction, sigma) - model.log_prob(x - h * direction, sigma)) / (2 * h)
    torch.testing.assert_close((score * direction).flatten(1).sum(1), fd.detach(), rtol=1e-6, atol=1e-6)


def test_sigma_conditioning_changes_the_density_and_needs_sigma():
    model = _tiny_flow(Glow, True)
    x = _x((2, 1, 8, 8))
    assert not torch.allclose(model.log_prob(x, 0.1), model.log_prob(x, 0.5))
    with pytest.raises(ValueError, match="needs sigma"):
        model.log_prob(x)
    with pytest.raises(UserError, match="multiples of 4"):
        model.log_prob(_x((1, 1, 8, 6)), 0.1)


# --- the per-σ bundle --------------------------------------------------------------------

def _tiny_bundle(sigmas=(0.5, 0.1)):
    torch.manual_seed(0)
    bundle = FlowBundle("glow", {"levels": 2, "depth": 1, "hidden": 4}, sigmas)
    for k, member in enumerate(bundle.members):
        _randomize(member, seed=10 + k)
    return bundle.double().eval()


def test_bundle_uses_the_member_of_each_sigma_and_names_its_sigmas_otherwise():
    bundle = _tiny_bundle()
    x = _x((2, 1, 8, 8))
    for member, sigma in zip(bundle.members, (0.5, 0.1)):
        assert member.noise_sigma == sigma
        torch.testing.assert_close(bundle.score(x, sigma), member.score(x, sigma), rtol=0, atol=0)
        torch.testing.assert_close(bundle.log_prob(x, sigma * (1 + 1e-6)), member.log_prob(x), rtol=0, atol=0)
    mixed = bundle.log_prob(x, torch.tensor([0.5, 0.1], dtype=F64))
    assert mixed[0] == bundle.members[0].log_prob(x)[0] and mixed[1] == bundle.members[1].log_prob(x)[1]
    assert not torch.equal(bundle.members[0].log_prob(x), bundle.members[1].log_prob(x))
    with pytest.raises(UserError) as excinfo:
        bundle.score(x, 0.3)
    message = str(excinfo.value)
    assert "0.5, 0.1" in message and "0.3" in message and "\n" not in message


def test_build_flow_from_config():
    bundle = build_flow("realnvp", FlowConfig(conditioning="bundle", levels=2, depth=1, hidden=4, n_sigmas=10))
    assert bundle.sigmas == pytest.approx(BasisConfig().noise_levels(), rel=1e-12)  # BASIS serves exactly these
    assert all(isinstance(m, RealNVP) and not m.conditional for m in bundle.members)
    cond = build_flow("glow", FlowConfig(levels=2, depth=1, hidden=4, sigma_min=0.02))
    assert isinstance(cond, Glow) and cond.conditional and cond.sigma_min == 0.02
    single = build_flow("glow", FlowConfig(conditioning="none", levels=2, depth=1, hidden=4, noise_sigma=0.0))
    assert not single.conditional and single.noise_sigma == 0.0
    # the default σ-conditioned Glow stores about a tenth of a 10-member bundle of the same architecture
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ratio = count(build_flow("glow", FlowConfig())) / count(build_flow("glow", FlowConfig(conditioning="bundle")))
    assert 0.1 <= ratio < 0.12


def test_flows_serve_basis_under_no_grad():
    # A bundle of members at BASIS's own schedule and a σ-conditioned flow, in one run.
    config = BasisConfig(sigma_max=0.5, sigma_min=0.1, n_levels=2, steps_per_level=2, delta=1e-4)
    priors = [_tiny_bundle(config.noise_levels()).float(), _tiny_flow(Glow, True).float()]
    mixture = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = basis_separate(priors, mixture, LinearMixing([1.0, 1.0]), config, progress=False)
    assert out.shape == (2, 3, 1, 8, 8) and bool(torch.isfinite(out).all())


# --- checkpoints and training ------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: _tiny_flow(Glow, True).float(), lambda: _tiny_flow(RealNVP, False).float(),
                                  lambda: _tiny_bundle().float()], ids=["glow-sigma", "realnvp", "bundle"])
def test_checkpoint_round_trip_keeps_density_and_domain(tmp_path, make):
    model, domain = make(), Domain.image((1, 8, 8))
    save_checkpoint(tmp_path / "f.pt", model, domain)
    loaded = load_prior(tmp_path / "f.pt", expected_domain=domain)
    assert type(loaded) is type(model) and loaded.domain == domain and loaded.get_config() == model.get_config()
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded.log_prob(x, 0.1), model.log_prob(x, 0.1), rtol=0, atol=0)
    with pytest.raises(UserError, match="images 1×8×8"):
        load_prior(tmp_path / "f.pt", expected_domain=Domain.image((1, 16, 16)))


def _digits():
    images = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16  # 17 levels in [0, 1]
    return TensorDataset(images[:1500]), images[1500:1756]


def test_tiny_glow_learns_digits(tmp_path):
    # Reference: the maximum-likelihood full-covariance Gaussian of the dequantised training
    # digits (scipy), the best model with linear dependencies (2.96 bits/dim here). 150 steps
    # of a small Glow must beat it on held-out digits (it reaches ≈ 2.7).
    train_set, valid = _digits()
    torch.manual_seed(0)
    train_x = dequantize(train_set.tensors[0], 17).reshape(1500, 64).double().numpy()
    valid_x = dequantize(valid, 17)
    gaussian = multivariate_normal(train_x.mean(axis=0), np.cov(train_x.T))
    gaussian_bpd = bits_per_dim(torch.tensor(gaussian.logpdf(valid_x.reshape(-1, 64).double().numpy())), 64,
                                n_bins=17).mean().item()

    seed_everything(0)
    model = Glow(levels=2, depth=3, hidden=32, noise_sigma=0.0)
    loss = functools.partial(_digit_loss, n_bins=17)
    config = TrainConfig(steps=150, batch_size=32, lr=3e-3, checkpoint_every=150, valid_every=150, valid_batches=1,
                         progress=False, ema_decay=0.95)
    losses = []
    train(model, loss, train_set, None, config, tmp_path / "digits.pt", Domain.image((1, 8, 8)),
          callback=lambda step, logs: losses.append(logs["loss"]))
    prior = load_prior(tmp_path / "digits.pt")
    with torch.no_grad():
        valid_bpd = bits_per_dim(prior.log_prob(valid_x), 64, n_bins=17).mean().item()
    assert np.mean(losses[:5]) > np.mean(losses[-10:]) + 1.0
    assert valid_bpd < gaussian_bpd - 0.15, (valid_bpd, gaussian_bpd)


def _digit_loss(model, batch, n_bins):
    (x,) = batch
    return flow_nll(model, x, n_bins)


_DDP_SCRIPT = textwrap.dedent("""
    import torch
    import torch.distributed as dist
    from torch.utils.data import TensorDataset
    from audiosep.config import TrainConfig
    from audiosep.priors import Domain
    from audiosep.priors.flows import Glow, flow_nll
    from audiosep.training import train
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different initial weights per rank: train() must broadcast
    model = Glow(levels=2, depth=1, hidden=4, conditional=True)
    data = TensorDataset(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    config = TrainConfig(steps=3, batch_size=2, checkpoint_every=3, progress=False)
    train(model, lambda m, b: flow_nll(m, b[0]), data, None, config, {out!r} + "/ddp.pt", Domain.image((1, 8, 8)))
    torch.save(model.state_dict(), {out!r} + f"/rank{{rank}}.pt")
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_torchrun_actnorm_init_agrees_across_processes(tmp_path, torchrun):
    # Each process initialises its actnorms on its own batch after rank 0's weights are
    # broadcast; with statistics averaged over processes the weights stay identical.
    script = tmp_path / "ddp_flow.py"
    script.write_text(_DDP_SCRIPT.format(out=str(tmp_path)))
    torchrun(script, done=lambda: all((tmp_path / f"rank{r}.pt").exists() for r in (0, 1)))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0) and bool(rank0["levels.0.1.initialized"])


# --- the command line --------------------------------------------------------------------

SR = 16000


def _stems_dataset(root):
    t = np.arange(3 * SR) / SR
    for split in ("train", "valid"):
        track = root / split / "t0"
        track.mkdir(parents=True)
        stems = {name: (0.1 * np.sin(2 * np.pi * f * t) * (1 + 0.3 * np.sin(np.pi * t))).astype(np.float32)
                 for name, f in (("src0", 220.0), ("src1", 1760.0))}
        for name, wav in stems.items():
            sf.write(track / f"{name}.wav", wav, SR, subtype="FLOAT")
        sf.write(track / "mix.wav", sum(stems.values()), SR, subtype="FLOAT")
    return root


def _train_args(data, out, *extra):
    return [str(a) for a in ("train", *extra, "--data", data, "--source", "src0", "-o", out,
                             "--preset", "audiosourcesep", "--batch-size", "2", "--levels", "2")]


def test_cli_trains_sigma_conditioned_glow_and_a_bundle(tmp_path, capsys):
    from audiosep.spectral.frontend import get_frontend

    data, domain = _stems_dataset(tmp_path / "data"), Domain.mel(get_frontend("audiosourcesep"))
    assert main(_train_args(data, tmp_path / "glow.pt", "glow", "--steps", "2", "--depth", "1", "--hidden", "4")) == 0
    assert "bits/dim" in capsys.readouterr().out
    prior = load_prior(tmp_path / "glow.pt", expected_domain=domain)
    assert isinstance(prior, Glow) and prior.conditional

    config = tmp_path / "bundle.yaml"
    config.write_text("model:\n  conditioning: bundle\n  depth: 1\n  hidden: 4\n  n_sigmas: 2\nfinetune_steps: 1\n"
                      "train:\n  progress: false\n")
    argv = _train_args(data, tmp_path / "pv.pt", "realnvp", "--config", config, "--steps", "2")
    assert main(argv) == 0
    bundle = load_prior(tmp_path / "pv.pt", expected_domain=domain)
    assert isinstance(bundle, FlowBundle) and bundle.sigmas == geometric_sigmas(1.0, 0.01, 2).tolist()
    steps = {s: load_checkpoint(bundle_member_path(tmp_path / "pv.pt", s))["step"] for s in bundle.sigmas}
    assert steps == {0.01: 2, 1.0: 1} and load_checkpoint(tmp_path / "pv.pt")["step"] == 3
    assert main(argv) == 0  # finished members are read back, not retrained
    again = load_prior(tmp_path / "pv.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), bundle.state_dict().values()))
    x = torch.rand(1, 1, 96, 64)
    assert bundle.score(x, 1.0).shape == x.shape


def test_cli_flow_error_is_one_line(tmp_path, capsys):
    data = _stems_dataset(tmp_path / "data")
    assert main(_train_args(data, tmp_path / "g.pt", "glow", "--steps", "1")[:-1] + ["6"]) == 2
    err = capsys.readouterr().err.strip()
    assert "multiples of 64, got 1×96×64" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "g.pt").exists()


@pytest.mark.parametrize("conditioning", ["sigma", "bundle"])
def test_flows_train_on_centred_images(tmp_path, conditioning):
    from audiosep.training.data import Images
    from audiosep.training.flow import train_flow

    out = tmp_path / "g.pt"
    config = FlowConfig(conditioning=conditioning, levels=2, depth=1, hidden=4, n_sigmas=2)
    result = train_flow(Images("digits", valid_items=8), out, model_config=config,
                        finetune_steps=1 if conditioning == "bundle" else None,
                        config=TrainConfig(steps=2, batch_size=4, valid_batches=1, progress=False))
    prior = load_prior(out, expected_domain=Domain.image((1, 8, 8), (-0.5, 0.5)))
    assert np.isfinite(result["valid_loss"])
    sigma = prior.fixed_sigmas[0] if prior.fixed_sigmas else 0.5
    assert prior.score(torch.zeros(3, 1, 8, 8), sigma).shape == (3, 1, 8, 8)
    stored = load_checkpoint(bundle_member_path(out, 1.0) if conditioning == "bundle" else out)
    assert stored["extra"]["data"] == {"images": "digits", "dequantized": 256}


def test_image_flows_learn_the_dequantised_8_bit_images(tmp_path, monkeypatch):
    """Every training batch is dequantised within its 8-bit bins (over [−0.5, 0.5)) and the
    loss is the discrete images' bits/dim: log2(256) = 8 above the density's bits."""
    import audiosep.training.flow as training_flow
    from audiosep.training.data import Images
    from audiosep.training.flow import train_flow

    seen = []
    def spy(model, x, n_bins=None, low=0.0):
        seen.append((x.clone(), n_bins, low))
        return flow_nll(model, x, n_bins, low)

    monkeypatch.setattr(training_flow, "flow_nll", spy)
    config = FlowConfig(conditioning="none", noise_sigma=0.0, levels=2, depth=1, hidden=4)
    result = train_flow(Images("digits", valid_items=8), tmp_path / "g.pt", model_config=config,
                        config=TrainConfig(steps=1, batch_size=4, valid_batches=1, progress=False))
    x, n_bins, low = seen[0]
    assert (n_bins, low) == (256, -0.5)
    k = torch.round((x + 0.5) * 255)
    assert ((x + 0.5) * 255 - k).abs().max() < 1e-4  # the loss receives the 8-bit grid
    torch.manual_seed(0)
    y = dequantize(x, n_bins, low)
    assert torch.equal(torch.floor((y + 0.5) * 256), k) and bool((y < 0.5).all())
    prior = load_prior(tmp_path / "g.pt")
    with torch.no_grad():
        torch.manual_seed(1)
        own = bits_per_dim(prior.log_prob(dequantize(x, 256, -0.5), None), 64, 256).mean().item()
    assert 8.0 < own and np.isfinite(result["valid_loss"]) and result["valid_loss"] > 8.0


# --- the denoising experiment: ND / CD flows, sampling (priors.denoising) -------------------

def _tiny_cd_flow(cls=RealNVP, c_max=0.4, seed=0):
    torch.manual_seed(seed)
    model = cls(levels=2, depth=2, hidden=8, conditional=True, sigma_max=c_max, sigma_scale="linear")
    return _randomize(model, seed).double().eval()


@pytest.mark.parametrize("cls", [Glow, RealNVP])
def test_cd_flow_takes_sigma_zero_and_is_an_exact_bijection(cls):
    model = _tiny_cd_flow(cls)
    x = _x((2, 1, 8, 8))
    sigma = torch.tensor([0.0, 0.3], dtype=F64)
    assert torch.isfinite(model.log_prob(x, 0.0)).all()
    assert not torch.allclose(model.log_prob(x, 0.0), model.log_prob(x, 0.3))  # σ is an input
    latents, logdet = model.transform(x, sigma)
    assert (model.inverse(latents, sigma) - x).abs().max() < 1e-5
    expected = _per_item_jacobian_logdets(
        lambda t: torch.cat([z.flatten(1) for z in model.transform(t, sigma)[0]], 1), x)
    torch.testing.assert_close(logdet, expected, rtol=1e-9, atol=1e-9)
    with pytest.raises(UserError, match="sigma >= 0"):
        model.log_prob(x, -0.1)
    with pytest.raises(UserError, match="sigma > 0"):  # the BASIS (log σ) flow has no σ = 0
        _tiny_flow(cls, True).log_prob(x, 0.0)


def test_cd_flow_draws_sigma_uniformly_from_zero():
    model = _tiny_cd_flow(c_max=0.4)
    torch.manual_seed(0)
    sigma = model.training_sigmas(20000, dtype=F64)
    assert 0 <= sigma.min() < 0.001 and 0.399 < sigma.max() <= 0.4
    assert sigma.mean().item() == pytest.approx(0.2, abs=0.005)
    assert (sigma < 0.1).double().mean().item() == pytest.approx(0.25, abs=0.01)  # not log-uniform


def test_a_checkpoint_without_sigma_scale_rebuilds_the_basis_flow(tmp_path):
    model, domain = _tiny_flow(Glow, True).float(), Domain.image((1, 8, 8))
    save_checkpoint(tmp_path / "old.pt", model, domain)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload["config"]["sigma_scale"]  # as written before the option existed
    torch.save(payload, tmp_path / "old.pt")
    old = load_prior(tmp_path / "old.pt")
    assert old.sigma_scale == "log" and old.get_config() == model.get_config()
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(old.log_prob(x, 0.1), model.log_prob(x, 0.1), rtol=0, atol=0)
    sigma = old.training_sigmas(2000)
    assert old.sigma_min <= sigma.min() and sigma.max() <= old.sigma_max
    assert (sigma < 0.1).float().mean().item() == pytest.approx(0.5, abs=0.05)  # log-uniform over [0.01, 1]
    with pytest.raises(UserError, match="sigma > 0"):
        old.log_prob(x, 0.0)


def test_denoising_section_builds_the_flow_and_contradictions_are_one_line_errors():
    from audiosep.config import from_dict
    from audiosep.priors.denoising import DenoisingConfig
    from audiosep.training.flow import FlowRun

    arch = {"levels": 2, "depth": 1, "hidden": 4}
    vanilla = build_flow("glow", FlowConfig(conditioning="none", **arch), DenoisingConfig())
    assert not vanilla.conditional and vanilla.noise_sigma == 0.01  # the flow default: today's behaviour
    nd = build_flow("glow", FlowConfig(**arch), DenoisingConfig(mode="nd", sigma=0.2))
    assert not nd.conditional and nd.noise_sigma == 0.2
    assert build_flow("glow", FlowConfig(conditioning="none", noise_sigma=0.0, **arch),
                      DenoisingConfig(mode="td", sigma=0.2)).noise_sigma == 0.2
    cd = build_flow("realnvp", FlowConfig(**arch), DenoisingConfig(mode="cd", c_max=0.3))
    assert cd.conditional and cd.sigma_scale == "linear" and cd.sigma_max == 0.3
    assert build_flow("glow", FlowConfig(**arch)).sigma_scale == "log"  # no section: the BASIS flow
    for model, mode in [({"conditioning": "sigma"}, "nd"), ({"conditioning": "bundle"}, "cd"),
                        ({"conditioning": "none"}, "cd"), ({"noise_sigma": 0.05}, "nd"), ({"noise_sigma": 0.05}, "cd")]:
        with pytest.raises(UserError) as excinfo:
            build_flow("glow", FlowConfig(**arch, **model), DenoisingConfig(mode=mode))
        assert "contradicts denoising mode" in str(excinfo.value) and "\n" not in str(excinfo.value)
    with pytest.raises(UserError, match="sigma_denoising"):  # read strictly, like every section
        from_dict(FlowRun, {"denoising": {"mode": "nd", "sigma_denoising": 0.1}})


def test_flow_samples_have_the_domain_shape_follow_the_generator_and_temperature():
    model = _tiny_cd_flow(Glow)
    model.domain = Domain.image((1, 8, 16), (-0.5, 0.5))
    draw = lambda seed, **kw: model.sample(4, generator=torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (4, 1, 8, 16) and a.dtype == F64 and not a.requires_grad
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(draw(1, sigma=0.3), a)  # the σ input of a CD flow
    mode = draw(1, temperature=0.0)
    assert torch.allclose(mode[0], mode[3])  # every draw is the image of ε = 0
    latents, _ = model.transform(mode, 0.0)
    assert max(z.abs().max().item() for z in latents) < 1e-6
    hot = draw(1, temperature=2.0)
    assert sum(z.pow(2).sum().item() for z in model.transform(hot, 0.0)[0]) == pytest.approx(
        4 * sum(z.pow(2).sum().item() for z in model.transform(a, 0.0)[0]), rel=1e-6)  # ε scales with T
    with pytest.raises(ValueError, match="no domain"):
        _tiny_flow(RealNVP, False).sample(1)


def _flow_yaml(path, denoising):
    path.write_text("model:\n  levels: 2\n  depth: 1\n  hidden: 4\n" + denoising +
                    "train:\n  batch_size: 8\n  valid_batches: 1\n  progress: false\n")
    return path


def test_cli_trains_an_nd_flow_on_images_and_stores_its_denoising_section(tmp_path, capsys):
    config = _flow_yaml(tmp_path / "nd.yaml", "denoising:\n  mode: nd\n  sigma: 0.2\n")
    assert main(["train", "realnvp", "--images", "digits", "--config", str(config), "--steps", "2",
                 "-o", str(tmp_path / "nd.pt")]) == 0
    payload = load_checkpoint(tmp_path / "nd.pt")
    assert payload["extra"]["data"] == {"images": "digits", "dequantized": 256, "denoising": {"mode": "nd", "sigma": 0.2, "c_max": 0.5}}
    prior = load_prior(tmp_path / "nd.pt", expected_domain=Domain.image((1, 8, 8), (-0.5, 0.5)))
    assert isinstance(prior, RealNVP) and not prior.conditional and prior.noise_sigma == 0.2
    assert prior.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 1, 8, 8)

    bad = _flow_yaml(tmp_path / "bad.yaml", "  conditioning: sigma\ndenoising:\n  mode: cd\n")
    assert main(["train", "glow", "--images", "digits", "--config", str(bad), "--steps", "2",
                 "-o", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "contradicts denoising mode 'cd'" in err and "\n" not in err and not (tmp_path / "bad.pt").exists()
    mel = _flow_yaml(tmp_path / "mel.yaml", "denoising:\n  mode: nd\n")
    assert main(_train_args(_stems_dataset(tmp_path / "data"), tmp_path / "mel.pt", "glow", "--config", mel,
                            "--steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert "for flows on --images" in err and "\n" not in err and not (tmp_path / "mel.pt").exists()
