"""VAE / VAE-BSS: the variational switch, deterministic evaluation, VAEM masks over all K
outputs, the β warm-up through the training loop, strict configs, checkpoints and the CLI."""
import dataclasses

import pytest
import torch

from audiosep.cli import main
from audiosep.config import TrainConfig, from_dict
from audiosep.errors import UserError
from audiosep.priors.base import Domain, load_checkpoint, load_prior
from audiosep.priors.vae import LAPLACE_SCALE, VAE, kl_standard_normal, vae_loss
from audiosep.separation.vae_bss import vae_separate, vaem_mask
from audiosep.training.data import Images
from audiosep.training.vae import LossConfig, VAEConfig, VAELoss, VAERun, train_vae


def _tiny(variational=True, k=2, arch="mlp", shape=(1, 8, 8)):
    torch.manual_seed(0)
    return VAE(shape, n_sources=k, latent_dim=3, arch=arch, hidden=(16, 8), channels=(4, 8), variational=variational)


def test_the_variational_switch_changes_the_model():
    x = torch.rand(6, 1, 8, 8)
    vae, ae = _tiny(True), _tiny(False)
    vae.train(), ae.train()
    torch.manual_seed(1)
    first = vae(x)[0]
    assert not torch.equal(first, vae(x)[0])  # z sampled in training
    assert torch.equal(ae(x)[0], ae(x)[0])  # the auto-encoder decodes μ
    # the auto-encoder's loss has no KL term; the VAE's has β·KL
    sources, mu, logvar = ae(x)
    nll = ((x - sources.sum(1)).abs().flatten(1).sum(1) / LAPLACE_SCALE).mean()
    assert torch.allclose(vae_loss(ae, x, beta=0.5), nll)
    with pytest.raises(UserError, match="variational must be true or false"):
        VAE((1, 8, 8), variational="False")  # the earlier code's string flag


def test_evaluation_is_deterministic_and_uses_the_mean():
    model = _tiny()
    model.eval()
    x = torch.rand(4, 1, 8, 8)
    mu, _ = model.encode(x)
    assert torch.equal(model(x)[0], model.decode(mu))
    a, b = vae_separate(model, x, mask=False, n_mix=2), vae_separate(model, x, mask=False, n_mix=2)
    assert torch.equal(a, b) and torch.allclose(a, 2 * model.decode(mu))
    model.train()
    vae_separate(model, x)
    assert model.training  # the caller's mode is restored


@pytest.mark.parametrize("k", [2, 3, 4])
def test_vaem_masks_sum_to_the_mixture_over_all_k_outputs(k):
    gen = torch.Generator().manual_seed(k)
    sources = torch.rand(5, k, 1, 6, 6, generator=gen)
    sources[0, :, 0, 0, 0] = 0.0  # every output silent in one pixel
    mixture = torch.rand(5, 1, 6, 6, generator=gen)
    masked = vaem_mask(sources, mixture)
    torch.testing.assert_close(masked.sum(dim=1), mixture)
    torch.testing.assert_close(masked[0, :, 0, 0, 0], mixture[0, 0, 0, 0].expand(k) / k)
    share = sources[1, k - 1] / sources[1].sum(0)  # the last output is masked like the others
    torch.testing.assert_close(masked[1, k - 1], share * mixture[1])


def test_vae_separate_masks_over_the_models_k_sources():
    model = _tiny(k=3)
    mix = torch.rand(4, 1, 8, 8)
    est = vae_separate(model, mix, mask=True, n_mix=2)
    assert est.shape == (4, 3, 1, 8, 8)
    torch.testing.assert_close(est.sum(dim=1), 2 * mix)


def test_conv_variant_round_trips_shapes_and_checks_them():
    model = _tiny(arch="conv", shape=(3, 8, 8))
    sources, mu, logvar = model(torch.rand(2, 3, 8, 8))
    assert sources.shape == (2, 2, 3, 8, 8) and mu.shape == (2, 2, 3)
    with pytest.raises(UserError, match="divisible by 4"):
        VAE((1, 6, 6), arch="conv", channels=(4, 8))
    with pytest.raises(UserError, match="takes inputs of shape"):
        model.encode(torch.rand(2, 1, 8, 8))


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    assert kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0
    assert torch.allclose(kl_standard_normal(torch.ones(1, 2), torch.zeros(1, 2)), torch.tensor([1.0]))


def test_beta_warms_up_through_the_training_loop(tmp_path, monkeypatch):
    loss = VAELoss(LossConfig(beta=0.5, warmup_steps=4))
    assert [loss.beta_at(s) for s in (1, 2, 4, 9)] == [0.125, 0.25, 0.5, 0.5]
    seen = []
    original = VAELoss.at_step

    def recording(self, step):
        seen.append(step)
        return original(self, step)

    monkeypatch.setattr(VAELoss, "at_step", recording)
    run = VAERun(model=VAEConfig(hidden=(16, 8), latent_dim=3),
                 train=TrainConfig(steps=3, batch_size=8, progress=False, valid_batches=1),
                 loss=LossConfig(warmup_steps=4))
    result = train_vae(Images("digits", valid_items=16), tmp_path / "v.pt", run)
    assert seen == [1, 2, 3]
    payload = load_checkpoint(tmp_path / "v.pt")
    assert payload["kind"] == "vae" and payload["extra"]["data"]["images"] == "digits"
    model = load_prior(tmp_path / "v.pt", expected_domain=Domain.image((1, 8, 8)))
    assert model.n_sources == 2 and result["step"] == 3
    with pytest.raises(UserError, match="n_mix"):  # resuming with another mixing is refused
        train_vae(Images("digits", valid_items=16), tmp_path / "v.pt", dataclasses.replace(run, loss=LossConfig(warmup_steps=4, n_mix=4)))


def test_unknown_config_keys_and_bad_values_are_refused():
    with pytest.raises(UserError, match="n_source"):
        from_dict(VAERun, {"model": {"n_source": 3}})
    with pytest.raises(UserError, match="sigma_denoising"):
        from_dict(VAERun, {"loss": {"sigma_denoising": 0.1}})
    with pytest.raises(UserError, match="n_mix"):
        LossConfig(n_mix=0)
    with pytest.raises(UserError, match="multiple of the images per mixture"):
        train_vae(Images("digits"), "unused.pt", VAERun(train=TrainConfig(batch_size=7)))


def test_cli_trains_vae_and_ncsn_on_images(tmp_path, capsys):
    out = tmp_path / "v.pt"
    assert main(["train", "vae", "--images", "digits", "-o", str(out), "--steps", "2", "--batch-size", "8",
                 "--sources", "3", "--mix", "4", "--autoencoder", "--threads", "1"]) == 0
    model = load_prior(out)
    assert model.n_sources == 3 and model.variational is False
    assert load_checkpoint(out)["extra"]["data"]["n_mix"] == 4
    assert "nats per training input" in capsys.readouterr().out
    ncsn = tmp_path / "n.pt"
    assert main(["train", "ncsn", "--images", "digits", "-o", str(ncsn), "--steps", "1", "--batch-size", "4",
                 "--nf", "4", "--threads", "1"]) == 0
    assert load_prior(ncsn).domain == Domain.image((1, 8, 8), (0.0, 1.0))
    capsys.readouterr()
    assert main(["train", "vae", "--images", "svhn:/nowhere", "-o", str(tmp_path / "x.pt"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown image dataset 'svhn'" in err and "\n" not in err
    assert not (tmp_path / "x.pt").exists()


# --- denoising variants (ND / TD / CD) ---------------------------------------------------

def test_denoising_config_is_strict_and_validated():
    from audiosep.priors.denoising import DenoisingConfig

    with pytest.raises(UserError, match="sigma_denoising"):  # the earlier README's key
        from_dict(VAERun, {"denoising": {"mode": "nd", "sigma_denoising": 0.1}})
    with pytest.raises(UserError, match="mode must be one of"):
        DenoisingConfig(mode="tweedie")
    with pytest.raises(UserError, match="needs sigma > 0"):
        DenoisingConfig(mode="nd", sigma=0)
    with pytest.raises(UserError, match="needs c_max > 0"):
        DenoisingConfig(mode="cd", c_max=0)
    assert from_dict(VAERun, {"denoising": {"mode": "cd", "c_max": 0.3}}).denoising.conditioned


def test_training_noise_per_mode():
    from audiosep.priors.denoising import DenoisingConfig, training_noise

    x = torch.zeros(2000, 1, 16, 16, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    same, sigma = training_noise(x, DenoisingConfig())
    assert same is x and sigma.abs().max() == 0
    noisy, sigma = training_noise(x, DenoisingConfig(mode="nd", sigma=0.2), gen)
    assert torch.all(sigma == 0.2) and abs(noisy.std().item() - 0.2) < 0.005
    noisy, sigma = training_noise(x, DenoisingConfig(mode="cd", c_max=0.5), gen)
    assert 0 <= sigma.min() and sigma.max() <= 0.5 and abs(sigma.mean().item() - 0.25) < 0.01
    per_item = noisy.flatten(1).std(dim=1)  # each item's noise follows its own σ
    assert torch.corrcoef(torch.stack([per_item, sigma]))[0, 1] > 0.9


def test_sigma_conditioning_is_an_input_only_when_asked():
    x = torch.rand(3, 1, 8, 8)
    for arch in ("mlp", "conv"):
        torch.manual_seed(0)
        plain = VAE((1, 8, 8), latent_dim=3, arch=arch, hidden=(16, 8), channels=(4, 8)).eval()
        torch.manual_seed(0)
        cond = VAE((1, 8, 8), latent_dim=3, arch=arch, hidden=(16, 8), channels=(4, 8), sigma_conditioned=True).eval()
        assert torch.equal(plain(x, 0.3)[0], plain(x, 0.0)[0])
        assert not torch.equal(cond(x, 0.3)[0], cond(x, 0.0)[0])
        assert torch.equal(cond(x)[0], cond(x, 0.0)[0])  # no σ given: clean data


def test_vae_score_is_the_gradient_of_its_elbo_and_tweedie_uses_it_once():
    from audiosep.priors.denoising import tweedie_denoise

    model = _tiny(k=1).double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():  # as BASIS calls it
        score = model.score(x, 0.1)
    eps = 1e-6
    for index in [(0, 0, 3, 4), (1, 0, 0, 7)]:
        bump = torch.zeros_like(x)
        bump[index] = eps
        up = -vae_loss(model, x + bump, 1.0, reduce=False).sum()
        down = -vae_loss(model, x - bump, 1.0, reduce=False).sum()
        assert abs((up - down).item() / (2 * eps) - score[index].item()) < 1e-4
    torch.testing.assert_close(tweedie_denoise(model, x, 0.1), x + 0.01 * score)


def test_vae_samples_are_reproducible_by_generator():
    model = _tiny(k=1).eval()
    a = model.sample(5, generator=torch.Generator().manual_seed(1))
    b = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 1, 8, 8) and torch.equal(a, b)


def test_cd_training_stores_its_denoising_settings(tmp_path):
    run = from_dict(VAERun, {"model": {"n_sources": 1, "hidden": [16, 8], "latent_dim": 3},
                             "loss": {"n_mix": 1},
                             "train": {"steps": 2, "batch_size": 8, "progress": False, "valid_batches": 1},
                             "denoising": {"mode": "cd", "c_max": 0.4}})
    train_vae(Images("digits", valid_items=16), tmp_path / "cd.pt", run)
    payload = load_checkpoint(tmp_path / "cd.pt")
    assert payload["config"]["sigma_conditioned"] is True
    assert payload["extra"]["data"]["denoising"] == {"mode": "cd", "sigma": 0.1, "c_max": 0.4}


def test_a_checkpoint_from_before_a_new_keyword_resumes(tmp_path):
    run = VAERun(model=VAEConfig(hidden=(16, 8), latent_dim=3),
                 train=TrainConfig(steps=2, batch_size=8, progress=False, valid_batches=1))
    train_vae(Images("digits", valid_items=16), tmp_path / "v.pt", run)
    payload = torch.load(tmp_path / "v.pt", weights_only=True)
    del payload["config"]["sigma_conditioned"]  # as written before the keyword existed
    torch.save(payload, tmp_path / "v.pt")
    result = train_vae(Images("digits", valid_items=16), tmp_path / "v.pt",
                       dataclasses.replace(run, train=dataclasses.replace(run.train, steps=3)))
    assert result["step"] == 3
