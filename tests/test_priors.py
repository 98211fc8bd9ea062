"""Prior protocol: Domain metadata, σ arguments, checkpoint round trips and load errors."""
import os

import pytest
import torch

from audiosep.errors import UserError
from audiosep.priors import Domain, NCSNv1, NCSNv2, Prior, load_prior, save_checkpoint, sigma_per_sample
from audiosep.priors.base import load_checkpoint

MEL = {"name": "tiny", "sample_rate": 16000, "n_fft": 512, "hop_length": 128, "n_mels": 16,
       "fmin": 0.0, "fmax": 8000.0, "patch_frames": 16}


def _tiny(cls=NCSNv2, seed=0):
    torch.manual_seed(seed)
    return cls(channels=1, nf=4, sigmas=[1.0, 0.1, 0.01], ch_mult=(1, 2), n_res_blocks=1)


def _one_line_user_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# --- Domain -------------------------------------------------------------------------------

def test_domain_equality_ignores_frontend_name_and_key_order():
    a = Domain.mel(MEL)
    b = Domain.mel(dict(reversed(list({**MEL, "name": "other"}.items()))))
    assert a == b and hash(a) == hash(b)
    assert a != Domain.mel({**MEL, "n_mels": 32})
    assert a != Domain.image((1, 16, 16))
    assert Domain.image((1, 28, 28)) == Domain.image([1, 28, 28], (0, 1))
    assert Domain.image((1, 28, 28)) != Domain.image((1, 28, 28), (-0.5, 0.5))


def test_domain_accepts_frontend_objects_and_round_trips():
    class FakeFrontend:
        def to_dict(self):
            return dict(MEL)

    d = Domain.mel(FakeFrontend())
    assert d.frontend_dict == MEL
    assert Domain.from_dict(d.to_dict()) == d
    img = Domain.image((3, 32, 32), (-0.5, 0.5))
    assert Domain.from_dict(img.to_dict()) == img


def test_domain_describe_is_one_line_with_settings():
    text = Domain.mel(MEL).describe()
    assert "\n" not in text and "'tiny'" in text and "n_mels=16" in text and "sample_rate=16000" in text
    assert Domain.image((1, 28, 28), (0, 1)).describe() == "images 1×28×28 with values in [0, 1]"


def test_domain_rejects_unknown_kind():
    with pytest.raises(UserError):
        Domain.from_dict({"kind": "spectrum"})
    with pytest.raises(UserError):
        Domain.from_dict({"kind": "waveform"})  # settings missing


def test_waveform_and_code_domains_round_trip_and_differ():
    wave = Domain.waveform(22050)
    assert Domain.from_dict(wave.to_dict()) == wave and wave != Domain.waveform(16000)
    assert wave.describe() == "waveforms at 22050 Hz, 1 channel(s)"
    codes = Domain.codes(256, 64, 22050, codec="abc123")
    assert Domain.from_dict(codes.to_dict()) == codes
    assert codes != Domain.codes(256, 64, 22050, codec="other") and codes != wave
    assert "abc123" in codes.describe() and "256 codes" in codes.describe()
    with pytest.raises(UserError):
        Domain.from_dict({"kind": "image"})


# --- σ arguments and the protocol ---------------------------------------------------------

def test_sigma_per_sample_broadcasts_and_checks_shape():
    x = torch.zeros(3, 1, 4, 4)
    assert torch.equal(sigma_per_sample(0.5, x), torch.full((3,), 0.5))
    assert torch.equal(sigma_per_sample(torch.tensor(0.25), x), torch.full((3,), 0.25))
    assert torch.equal(sigma_per_sample(torch.tensor([1.0, 2.0, 3.0]), x), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        sigma_per_sample(torch.ones(2), x)


def test_log_prob_not_available_for_score_models():
    with pytest.raises(NotImplementedError):
        _tiny().log_prob(torch.zeros(1, 1, 8, 8), 0.1)


# --- checkpoints --------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [NCSNv1, NCSNv2])
def test_checkpoint_round_trip_gives_same_scores(tmp_path, cls):
    model = _tiny(cls)
    domain = Domain.mel(MEL)
    path = save_checkpoint(tmp_path / "sub" / "prior.pt", model, domain, step=7, extra={"note": "x"})
    loaded = load_prior(path, expected_domain=Domain.mel({**MEL, "name": "renamed"}))
    assert type(loaded) is cls and not loaded.training
    assert loaded.domain == domain and loaded.get_config() == model.get_config()
    x = torch.rand(2, 1, 10, 12)
    sigma = torch.tensor([0.1, 0.5])
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(x, sigma), model.score(x, sigma), rtol=0, atol=0)
    payload = load_checkpoint(path)
    assert payload["step"] == 7 and payload["extra"] == {"note": "x"}
    assert payload["versions"]["torch"] == torch.__version__
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["prior.pt"]  # no temporary left behind


def test_load_prior_prefers_ema_weights(tmp_path):
    model, other = _tiny(seed=0), _tiny(seed=1)
    path = save_checkpoint(tmp_path / "p.pt", model, Domain.image((1, 8, 8)), ema_state=other.state_dict())
    loaded = load_prior(path)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(x, 0.1), other.score(x, 0.1), rtol=0, atol=0)
        assert not torch.allclose(loaded.score(x, 0.1), model.score(x, 0.1))


def test_export_keeps_the_ema_weights_only(tmp_path, capsys):
    from audiosep.cli import main

    model, other = _tiny(seed=0), _tiny(seed=1)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 1, 8, 8), 0.1).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "train.pt", model, Domain.image((1, 8, 8)), ema_state=other.state_dict(),
                           optimizer_state=optimizer.state_dict(), step=12,
                           extra={"train_config": {"lr": 1e-3}, "rng": [torch.zeros(5000, dtype=torch.uint8)]})
    assert main(["export", str(path), "-o", str(tmp_path / "small.pt")]) == 0
    assert "small.pt" in capsys.readouterr().out
    payload = load_checkpoint(tmp_path / "small.pt")
    assert payload["ema"] is None and payload["optimizer"] is None and payload["step"] == 12
    assert payload["extra"] == {"train_config": {"lr": 1e-3}, "exported_from": "train.pt", "weights_dtype": "fp32"}
    assert (tmp_path / "small.pt").stat().st_size < path.stat().st_size / 2
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_prior(tmp_path / "small.pt").score(x, 0.1), other.score(x, 0.1),
                                   rtol=0, atol=0)
    assert main(["export", str(path), "-o", str(path)]) == 2  # never over the training checkpoint
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("dtype, torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_a_half_precision_export_is_half_the_size_and_loads_as_float32(tmp_path, dtype, torch_dtype):
    from audiosep.cli import main

    model = _tiny(seed=3)
    path = save_checkpoint(tmp_path / "train.pt", model, Domain.image((1, 8, 8)))
    assert main(["export", str(path), "-o", str(tmp_path / "full.pt")]) == 0
    assert main(["export", str(path), "-o", str(tmp_path / "half.pt"), "--dtype", dtype]) == 0
    stored = load_checkpoint(tmp_path / "half.pt")
    assert stored["extra"]["weights_dtype"] == dtype
    assert all(v.dtype == torch_dtype for v in stored["state_dict"].values() if v.is_floating_point())
    float_bytes = sum(4 * v.numel() for v in model.state_dict().values() if v.is_floating_point())
    saved = (tmp_path / "full.pt").stat().st_size - (tmp_path / "half.pt").stat().st_size
    assert saved > 0.45 * float_bytes  # two bytes of every four (the file's framing aside)
    loaded = load_prior(tmp_path / "half.pt")
    for name, value in loaded.state_dict().items():  # float32 again, each weight its rounded self
        original = model.state_dict()[name]
        assert value.dtype == original.dtype
        if value.is_floating_point():
            torch.testing.assert_close(value, original.to(torch_dtype).float(), rtol=0, atol=0)


def test_save_checkpoint_needs_registered_prior_and_domain(tmp_path):
    class Unregistered(Prior):
        def get_config(self):
            return {}

    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "u.pt", Unregistered(), Domain.image((1, 8, 8)))
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "n.pt", _tiny(), None)
    assert not any(tmp_path.iterdir())


def test_load_prior_missing_file(tmp_path):
    with pytest.raises(UserError) as excinfo:
        load_prior(tmp_path / "nope.pt")
    _one_line_user_error(excinfo, "not found", "nope.pt")


def test_load_prior_wrong_domain_names_both(tmp_path):
    path = save_checkpoint(tmp_path / "p.pt", _tiny(), Domain.mel(MEL))
    with pytest.raises(UserError) as excinfo:
        load_prior(path, expected_domain=Domain.mel({**MEL, "n_mels": 96}))
    _one_line_user_error(excinfo, "n_mels=16", "n_mels=96", "p.pt")
    with pytest.raises(UserError) as excinfo:
        load_prior(path, expected_domain=Domain.image((1, 28, 28)))
    _one_line_user_error(excinfo, "mel front end", "images 1×28×28")


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n" * 10, os.urandom(4096)])
def test_load_prior_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as excinfo:
        load_prior(path)
    _one_line_user_error(excinfo, "garbage.pt", "not a file torch.save writes")


def test_load_prior_truncated_and_foreign_checkpoints(tmp_path):
    path = save_checkpoint(tmp_path / "p.pt", _tiny(), Domain.image((1, 8, 8)))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": _tiny().state_dict()}, foreign)
    for bad in (truncated, foreign):
        with pytest.raises(UserError) as excinfo:
            load_prior(bad)
        _one_line_user_error(excinfo, bad.name, "checkpoint")


def test_load_prior_unknown_kind_and_mismatched_weights(tmp_path):
    path = save_checkpoint(tmp_path / "p.pt", _tiny(), Domain.image((1, 8, 8)))
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "kind": "glow_v9", "module": "elsewhere.glow"}, tmp_path / "kind.pt")
    with pytest.raises(UserError) as excinfo:
        load_prior(tmp_path / "kind.pt")
    _one_line_user_error(excinfo, "a model of kind 'glow_v9', not one of the priors", "ncsn_v2")
    assert "masknet" in str(excinfo.value) and "glow" in str(excinfo.value)  # every kind, imported or not yet
    torch.save({**payload, "config": {**payload["config"], "nf": 8}}, tmp_path / "shape.pt")
    with pytest.raises(UserError) as excinfo:
        load_prior(tmp_path / "shape.pt")
    _one_line_user_error(excinfo, "weights do not fit")
