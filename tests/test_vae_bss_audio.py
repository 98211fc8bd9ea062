"""VAE-BSS on STFT magnitudes: the magnitude front end and its checkpoint domain, mixture-only
training data (deterministic by seed), the Separator method (stems sum to the mixture, one set
of masks for every channel), the slot alignment, and the CLI end to end on tiny data."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import audiosep.data.stems
from audiosep.cli import main
from audiosep.config import TrainConfig
from audiosep.data.stems import MixtureCrops
from audiosep.errors import UserError
from audiosep.priors.base import Domain, load_checkpoint, load_prior, save_checkpoint
from audiosep.priors.vae import VAE
from audiosep.separation.vae_bss import VAEBSS, align_slots, permute_slots
from audiosep.spectral.frontend import MagnitudeFrontend
from audiosep.training.data import Images, MixturePatches
from audiosep.training.mel import mixture_patch_sets
from audiosep.training.vae import LossConfig, VAERun, train_vae

SR = 16000
TINY_FE = MagnitudeFrontend(n_fft=64, hop_length=16, patch_frames=4)
TINY_CONFIG = """\
frontend: {n_fft: 64, hop_length: 16, patch_frames: 4}
model: {hidden: [16, 8], latent_dim: 3}
train: {steps: 3, batch_size: 4, valid_batches: 1}
"""


def _dataset(root: Path, silent_stems: bool = False, seconds: float = 0.5) -> Path:
    """root/{train,valid,test}/t{0,1}/{mix,src0,src1}.wav: two tones per track (with
    `silent_stems`, the stem files are silent and only mix.wav holds the tones)."""
    t = np.arange(int(SR * seconds)) / SR
    for split in ("train", "valid", "test"):
        for k, base in enumerate((220.0, 330.0)):
            track = root / split / f"t{k}"
            track.mkdir(parents=True)
            stems = [(0.2 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (base, base * 6)]
            for i, wav in enumerate(stems):
                sf.write(track / f"src{i}.wav", np.zeros_like(wav) if silent_stems else wav, SR, subtype="FLOAT")
            sf.write(track / "mix.wav", sum(stems), SR, subtype="FLOAT")
    return root


def _tiny_vae(frontend: MagnitudeFrontend = TINY_FE, k: int = 2) -> VAE:
    torch.manual_seed(0)
    model = VAE(frontend.patch_shape, n_sources=k, latent_dim=3, hidden=(16, 8))
    model.domain = Domain.magnitude(frontend)
    return model.eval()


def _run(*argv) -> int:
    return main([str(a) for a in argv])


# --- front end and domain -------------------------------------------------------------------

def test_a_crop_patch_is_the_centred_transform_of_the_signal_scaled_by_its_maximum():
    wav = torch.randn(2000)
    start_frame = 10
    crop = wav[start_frame * TINY_FE.hop_length - TINY_FE.n_fft // 2:][: TINY_FE.crop_samples]
    patch = TINY_FE.encode_crop(crop)
    whole = TINY_FE.stft(wav).abs()[:, start_frame:start_frame + TINY_FE.patch_frames]
    assert patch.shape == (TINY_FE.n_freqs, TINY_FE.patch_frames) and patch.max() == 1.0
    torch.testing.assert_close(patch, whole / whole.max(), atol=1e-5, rtol=1e-5)


def test_the_checkpoint_domain_refuses_another_front_end_in_one_line(tmp_path):
    path = save_checkpoint(tmp_path / "v.pt", _tiny_vae())
    assert load_prior(path, expected_domain=Domain.magnitude(TINY_FE)).domain == Domain.magnitude(TINY_FE)
    for other in (MagnitudeFrontend(n_fft=128, hop_length=16, patch_frames=4),
                  MagnitudeFrontend(n_fft=64, hop_length=16, patch_frames=4, sample_rate=22050)):
        with pytest.raises(UserError) as err:
            load_prior(path, expected_domain=Domain.magnitude(other))
        assert "\n" not in str(err.value) and "STFT-magnitude patches" in str(err.value)
    assert Domain.from_dict(Domain.magnitude(TINY_FE).to_dict()) == Domain.magnitude(TINY_FE)
    assert Domain.magnitude(TINY_FE) != Domain.mel({"n_fft": 64})


def test_an_image_vae_is_not_a_vae_bss_audio_method(tmp_path):
    model = VAE((1, 8, 8), latent_dim=3, hidden=(16, 8))
    path = save_checkpoint(tmp_path / "img.pt", model, Domain.image((1, 8, 8)))
    with pytest.raises(UserError, match="trained on STFT-magnitude patches .* not on images 1×8×8"):
        VAEBSS.from_file(path)


# --- training data ---------------------------------------------------------------------------

def test_training_reads_the_mix_files_only(tmp_path, monkeypatch):
    """Stems silent, mix.wav the only audible file: every crop is audible and only mix files are opened."""
    root = _dataset(tmp_path / "d", silent_stems=True)
    opened = []
    read_frames = audiosep.data.stems._read_frames
    monkeypatch.setattr(audiosep.data.stems, "_read_frames",
                        lambda path, start, stop: opened.append(Path(path).name) or read_frames(path, start, stop))
    train_ds, valid_ds = mixture_patch_sets(root, TINY_FE, TrainConfig(steps=3, batch_size=4, valid_batches=1,
                                                                                   epoch_items=12))
    assert len(train_ds) == 12
    items = [train_ds[i] for i in range(len(train_ds))] + [valid_ds[i] for i in range(len(valid_ds))]
    assert all(x.shape == (1, *TINY_FE.patch_shape[1:]) and x.max() == 1.0 for x in items)
    assert set(opened) == {"mix.wav"}


def test_a_track_without_a_mix_file_gives_the_sum_of_its_stems(tmp_path):
    root = _dataset(tmp_path / "d")
    for mix in root.glob("train/*/mix.wav"):
        mix.unlink()
    crops = MixtureCrops(root, crop_samples=500, sample_rate=SR, length=4, seed=1)
    track, start, crop = crops.locate(0)
    stems = [sf.read(track.sources[s][0], dtype="float32")[0][start:start + 500] for s in ("src0", "src1")]
    np.testing.assert_allclose(crop[0], stems[0] + stems[1], atol=1e-6)


def test_mixture_crops_depend_only_on_seed_and_index(tmp_path):
    root = _dataset(tmp_path / "d")
    a = MixtureCrops(root, crop_samples=300, sample_rate=SR, length=6, seed=3)
    b = MixtureCrops(root, crop_samples=300, sample_rate=SR, length=6, seed=3)
    c = MixtureCrops(root, crop_samples=300, sample_rate=SR, length=6, seed=4)
    forward = [a[i] for i in range(6)]
    backward = [b[i] for i in reversed(range(6))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))
    assert not all(torch.equal(x, y) for x, y in zip(forward, (c[i] for i in range(6))))


def test_config_sections_belong_to_their_data(tmp_path):
    with pytest.raises(UserError, match="frontend: section is for --data"):
        train_vae(Images("digits"), tmp_path / "v.pt", VAERun(frontend=TINY_FE))
    with pytest.raises(UserError, match="n_mix 2: with --data"):
        train_vae(MixturePatches(tmp_path), tmp_path / "v.pt", VAERun(loss=LossConfig(n_mix=2)))


# --- separation ------------------------------------------------------------------------------

@pytest.mark.parametrize("align", [False, True])
def test_stems_sum_to_the_mixture_and_every_channel_gets_the_same_masks(align):
    method = VAEBSS(_tiny_vae(), align=align)
    torch.manual_seed(1)
    left = torch.randn(3000)
    mix = torch.stack([left, 0.5 * left])  # the second channel: half the first
    stems = method(mix)
    assert stems.shape == (2, 2, 3000) and method.sources == ("source0", "source1")
    torch.testing.assert_close(stems.sum(dim=0), mix, atol=1e-5, rtol=0)
    torch.testing.assert_close(stems[:, 1], 0.5 * stems[:, 0], atol=1e-6, rtol=0)
    assert (stems[0].abs().sum() > 0) and (stems[1].abs().sum() > 0)


def test_masks_use_every_decoded_slot_and_sum_to_one():
    method = VAEBSS(_tiny_vae(k=3))
    magnitude = TINY_FE.stft(torch.randn(1500)).abs()
    shares, decoded, layout = method.slot_shares(magnitude)
    assert shares.shape == decoded.shape == (shares.shape[0], 3, 1, TINY_FE.n_freqs, TINY_FE.patch_frames)
    masks = method.masks(shares, layout)
    assert masks.shape == (3, *magnitude.shape)
    torch.testing.assert_close(masks.sum(dim=0), torch.ones_like(magnitude))


def test_alignment_recovers_a_known_permutation_of_slot_outputs():
    """K = 3 slot types (distinct spectra plus noise), shuffled per patch: the alignment puts
    each type in one group for every patch, up to one global renaming."""
    gen = torch.Generator().manual_seed(0)
    n_patches, k, dim = 200, 3, 40
    prototypes = torch.rand(k, dim, generator=gen)
    features = prototypes + 0.15 * torch.rand(n_patches, k, dim, generator=gen)
    features = features / features.norm(dim=-1, keepdim=True)
    shuffle = torch.stack([torch.randperm(k, generator=gen) for _ in range(n_patches)])
    shuffled = permute_slots(features, shuffle)  # slot j of patch b holds type shuffle[b, j]
    perm = align_slots(shuffled)
    types = permute_slots(shuffle, perm)  # the type in group g of every patch
    assert (types == types[0]).all() and sorted(types[0].tolist()) == list(range(k))
    assert not (shuffle == shuffle[0]).all()  # the input was shuffled


# --- command line ----------------------------------------------------------------------------

def test_cli_trains_on_mixtures_then_separates_with_vae_bss(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    ckpt = tmp_path / "vae.pt"
    assert _run("train", "vae", "--data", root, "--config", config, "-o", ckpt, "--threads", "1") == 0
    assert "valid loss" in capsys.readouterr().out
    payload = load_checkpoint(ckpt)
    assert payload["domain"] == Domain.magnitude(TINY_FE).to_dict() and payload["extra"]["data"]["mixtures"] == "d"
    out = tmp_path / "sep"
    mix_path = root / "test" / "t0" / "mix.wav"
    assert _run("separate", mix_path, "--method", "vae-bss", "--model", ckpt, "-o", out, "--threads", "1") == 0
    written = sorted((out / "vae" / "mix").iterdir())
    assert [p.name for p in written] == ["source0.wav", "source1.wav"]
    mix = sf.read(mix_path, dtype="float32")[0]
    total = sum(sf.read(p, dtype="float32")[0] for p in written)
    np.testing.assert_allclose(total, mix, atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--data", "{tmp}/missing", "-o", "{tmp}/v.pt"], "no such dataset folder"),
    (["train", "vae", "--data", "{data}", "--mix", "2", "-o", "{tmp}/v.pt"], "--data patches are mixtures"),
    (["separate", "{mix}", "--method", "vae-bss", "-o", "{tmp}/sep"], "has no vae-bss model"),
    (["separate", "{mix}", "--model", "{image}", "-o", "{tmp}/sep"], "not on images 1×8×8"),
    (["separate", "{mix}", "--model", "{audio}", "{audio}", "-o", "{tmp}/sep"], "one VAE checkpoint"),
    (["separate", "{mix}", "--method", "nmf", "--model", "{audio}", "-o", "{tmp}/sep"], "a VAE (vae-bss)"),
    (["separate", "{mix}", "--model", "{audio}", "--steps", "3", "-o", "{tmp}/sep"], "the method is vae-bss"),
], ids=["missing-data", "mix-with-data", "no-model", "image-vae", "two-vaes", "nmf-asked", "basis-option"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    root = _dataset(tmp_path / "d")
    image = save_checkpoint(tmp_path / "image.pt", VAE((1, 8, 8), latent_dim=3, hidden=(16, 8)), Domain.image((1, 8, 8)))
    audio = save_checkpoint(tmp_path / "audio.pt", _tiny_vae())
    names = {"tmp": tmp_path, "data": root, "mix": root / "test" / "t0" / "mix.wav", "image": image, "audio": audio}
    assert _run(*[a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "v.pt").exists() and not (tmp_path / "sep").exists()
