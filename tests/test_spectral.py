"""Spectral front end: mel scale, filterbank, mel spectrogram and dB against librosa;
normalisation against the closed form; presets; Frontend serialisation; patches."""
import dataclasses

import librosa
import numpy as np
import pytest
import torch

from audiosep.errors import UserError
from audiosep.spectral import functional as F
from audiosep.spectral.frontend import PRESETS, Frontend, get_frontend, patchify, unpatchify


def _harmonic(sr=16000, seconds=0.5, f0=220.0, seed=0):
    """A decaying harmonic tone plus a little noise, float64 (samples,)."""
    t = np.arange(int(sr * seconds)) / sr
    y = sum(np.sin(2 * np.pi * f0 * h * t + h) * np.exp(-3 * t) / h for h in range(1, 20) if f0 * h < sr / 2)
    return y + 1e-3 * np.random.default_rng(seed).standard_normal(t.size)


def _rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


@pytest.mark.parametrize("htk", [False, True])
def test_hz_mel_conversions_match_librosa(htk):
    freqs = np.array([0.0, 20.0, 440.0, 999.0, 1000.0, 1001.0, 4000.0, 11025.0])
    mels = F.hz_to_mel(torch.tensor(freqs), htk=htk).numpy()
    np.testing.assert_allclose(mels, librosa.hz_to_mel(freqs, htk=htk), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.mel_to_hz(torch.tensor(mels), htk=htk).numpy(), freqs, rtol=1e-10, atol=1e-9)
    assert float(F.hz_to_mel(1000.0, htk=htk)) == pytest.approx(librosa.hz_to_mel(1000.0, htk=htk))


@pytest.mark.parametrize("htk", [False, True])
@pytest.mark.parametrize("norm", ["slaney", None])
@pytest.mark.parametrize(
    "sr,n_fft,n_mels,fmin,fmax",
    [(16000, 2048, 96, 125.0, 7600.0), (22050, 4096, 256, 20.0, None), (16000, 512, 40, 0.0, None)],
)
def test_filterbank_matches_librosa(htk, norm, sr, n_fft, n_mels, fmin, fmax):
    ours = F.mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk=htk, norm=norm).numpy()
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm)
    assert ours.shape == ref.shape == (n_mels, n_fft // 2 + 1)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_filterbank_dtype_device_and_bad_norm():
    fb = F.mel_filterbank(16000, 512, 40, dtype=torch.float64, device="cpu")
    assert fb.dtype == torch.float64 and fb.device.type == "cpu"
    with pytest.raises(ValueError, match="norm"):
        F.mel_filterbank(16000, 512, 40, norm="l2")
    with pytest.warns(UserWarning, match="empty mel bands"):
        F.mel_filterbank(8000, 256, 256)
    with pytest.warns(UserWarning, match="Empty filters"):  # librosa agrees that some are empty
        librosa.filters.mel(sr=8000, n_fft=256, n_mels=256)


@pytest.mark.parametrize(
    "fe",
    [
        PRESETS["audiosourcesep"],
        PRESETS["default"],
        Frontend(sample_rate=22050, n_fft=1024, hop_length=256, win_length=800, n_mels=64, fmin=30.0, fmax=8000.0,
                 htk=True, mel_norm=None, power=1.0),
    ],
    ids=["audiosourcesep", "default", "htk-power1"],
)
def test_mel_power_matches_librosa_melspectrogram(fe):
    y = _harmonic(sr=fe.sample_rate)
    ref = librosa.feature.melspectrogram(
        y=y.astype(np.float32), sr=fe.sample_rate, n_fft=fe.n_fft, hop_length=fe.hop_length,
        win_length=fe.win_length, window="hann", center=True, pad_mode="reflect", power=fe.power,
        n_mels=fe.n_mels, fmin=fe.fmin, fmax=fe.fmax, htk=fe.htk, norm=fe.mel_norm,
    )
    ours = fe.mel_power(torch.tensor(y, dtype=torch.float32)).numpy()
    assert ours.shape == ref.shape
    assert _rel_err(ours, ref) <= 1e-4
    ours64 = fe.mel_power(torch.tensor(y)).numpy()
    ref64 = librosa.feature.melspectrogram(
        y=y, sr=fe.sample_rate, n_fft=fe.n_fft, hop_length=fe.hop_length, win_length=fe.win_length,
        pad_mode="reflect", power=fe.power, n_mels=fe.n_mels, fmin=fe.fmin, fmax=fe.fmax, htk=fe.htk, norm=fe.mel_norm,
        dtype=np.float64,
    )
    assert ours64.dtype == np.float64 and _rel_err(ours64, ref64) <= 1e-10


def test_mel_power_is_batched(device):
    fe = get_frontend("audiosourcesep")
    y = torch.tensor(np.stack([_harmonic(f0=f) for f in (110.0, 220.0, 440.0)]), dtype=torch.float32, device=device)
    batched = fe.mel_power(y.reshape(3, 1, -1))
    assert batched.shape == (3, 1, fe.n_mels, 16)
    for i in range(3):
        torch.testing.assert_close(batched[i, 0], fe.mel_power(y[i]))


@pytest.mark.parametrize("amin,ref,top_db", [(1e-10, 1.0, None), (1e-5, 3.0, None), (1e-10, 1.0, 80.0)])
def test_power_to_db_matches_librosa(amin, ref, top_db):
    power = np.abs(librosa.stft(_harmonic(), n_fft=512)) ** 2
    ours = F.power_to_db(torch.tensor(power), amin=amin, ref=ref, top_db=top_db).numpy()
    np.testing.assert_allclose(ours, librosa.power_to_db(power, amin=amin, ref=ref, top_db=top_db), rtol=1e-10, atol=1e-10)


def test_power_to_db_top_db_is_per_spectrogram():
    power = np.stack([np.abs(librosa.stft(_harmonic(f0=f), n_fft=512)) ** 2 * s for f, s in ((110, 1.0), (300, 1e-4))])
    ours = F.power_to_db(torch.tensor(power), top_db=60.0).numpy()
    for i in range(2):
        np.testing.assert_allclose(ours[i], librosa.power_to_db(power[i], top_db=60.0), rtol=1e-10, atol=1e-10)


def test_db_to_power_inverts_power_to_db():
    power = torch.tensor([1e-8, 1e-3, 0.5, 7.0, 100.0], dtype=torch.float64)
    torch.testing.assert_close(F.db_to_power(F.power_to_db(power, ref=2.0), ref=2.0), power)
    torch.testing.assert_close(F.db_to_power(torch.tensor([-10.0, 0.0, 20.0])), torch.tensor([0.1, 1.0, 100.0]))


def test_unit_mapping_closed_form_and_round_trip():
    db = torch.tensor([-150.0, -100.0, -40.0, 0.0, 20.0, 35.0])
    torch.testing.assert_close(F.db_to_unit(db, -100.0, 20.0), torch.tensor([0.0, 0.0, 0.5, 100 / 120, 1.0, 1.0]))
    inside = torch.linspace(-100.0, 20.0, 13)
    torch.testing.assert_close(F.unit_to_db(F.db_to_unit(inside, -100.0, 20.0), -100.0, 20.0), inside)
    u = torch.rand(50, dtype=torch.float64)
    torch.testing.assert_close(F.db_to_unit(F.unit_to_db(u, -80.0, 0.0), -80.0, 0.0), u)
    with pytest.raises(ValueError):
        F.db_to_unit(db, 20.0, -100.0)


def test_frontend_encode_is_the_audiosourcesep_recipe():
    """(clip(power, 1e-10, 1e2) → 10·log10 → +100) / 120, written out in numpy."""
    fe = get_frontend("audiosourcesep")
    y = _harmonic() * 3.0
    mel = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=2048, hop_length=512, pad_mode="reflect", n_mels=96, fmin=125, fmax=7600
    )
    expected = (10 * np.log10(np.clip(mel, 1e-10, 1e2)) + 100) / 120
    ours = fe.encode(torch.tensor(y)).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    assert 0.0 <= ours.min() and ours.max() <= 1.0
    mel_t = torch.tensor(mel)
    inside = (mel > 1e-10) & (mel < 1e2)
    np.testing.assert_allclose(fe.from_unit(fe.to_unit(mel_t)).numpy()[inside], mel[inside], rtol=1e-9)


def test_presets():
    a = get_frontend("audiosourcesep")
    assert (a.sample_rate, a.n_fft, a.hop_length, a.win_length, a.window, a.center, a.pad_mode) == (
        16000, 2048, 512, 2048, "hann", True, "reflect")
    assert (a.n_mels, a.fmin, a.fmax, a.htk, a.mel_norm, a.power) == (96, 125.0, 7600.0, False, "slaney", 2.0)
    assert (a.db_lo, a.db_hi, a.amin, a.patch_frames) == (-100.0, 20.0, pytest.approx(1e-10), 64)
    assert a.n_freqs == 1025
    d = get_frontend("default")
    assert d.name == "default" and d.fmax <= d.sample_rate / 2
    with pytest.raises(UserError, match="default.*audiosourcesep|audiosourcesep.*default"):
        get_frontend("nope")


def test_frontend_dict_round_trip_and_errors():
    fe = dataclasses.replace(get_frontend("default"), n_mels=128, name="mine")
    d = fe.to_dict()
    back = Frontend.from_dict(d)
    assert back == fe and back.name == "mine" and back.to_dict() == d
    assert fe == dataclasses.replace(fe, name="other") and hash(fe) == hash(dataclasses.replace(fe, name="x"))
    assert fe != get_frontend("default")
    with pytest.raises(UserError, match="unknown front-end key.*n_mel\\b"):
        Frontend.from_dict({**d, "n_mel": 96})
    with pytest.raises(UserError, match="lack required key.*sample_rate"):
        Frontend.from_dict({k: v for k, v in d.items() if k != "sample_rate"})
    with pytest.raises(UserError, match="fmax"):
        Frontend.from_dict({**d, "fmax": 20000.0})
    with pytest.raises(UserError, match="n_mels"):
        Frontend.from_dict({**d, "n_mels": 0})
    with pytest.raises(UserError, match="fmin must be a number"):
        Frontend.from_dict({**d, "fmin": "low"})


def test_filterbank_cached_per_device_and_dtype():
    fe = get_frontend("default")
    assert fe.filterbank() is fe.filterbank("cpu", torch.float32)
    fb64 = fe.filterbank(dtype=torch.float64)
    assert fb64.dtype == torch.float64 and fb64 is not fe.filterbank()


def test_stft_istft_round_trip_float64(device):
    fe = get_frontend("audiosourcesep")
    y = torch.tensor(_harmonic(seconds=0.3), device=device)
    spec = fe.stft(y)
    assert spec.dtype == torch.complex128 and spec.shape == (1025, 1 + y.numel() // 512)
    torch.testing.assert_close(fe.istft(spec, length=y.numel()), y, atol=1e-10, rtol=0)


@pytest.mark.parametrize("n_frames,patch,hop", [(100, 64, 32), (64, 64, 64), (10, 64, 16), (130, 64, 64), (97, 16, 5)])
def test_patchify_unpatchify_exact(n_frames, patch, hop):
    spec = torch.rand(2, 3, 8, n_frames, dtype=torch.float64)
    patches, layout = patchify(spec, patch, hop)
    n_patches = max(1, -(-(n_frames - patch) // hop) + 1)
    assert patches.shape == (6 * n_patches, 1, 8, patch)
    assert layout == (n_frames, hop, (2, 3))
    first = min(patch, n_frames)
    torch.testing.assert_close(patches[0, 0, :, :first], spec[0, 0, :, :first], rtol=0, atol=0)
    torch.testing.assert_close(patches[n_patches, 0, :, :first], spec[0, 1, :, :first], rtol=0, atol=0)
    assert (n_patches - 1) * hop + patch >= n_frames
    torch.testing.assert_close(unpatchify(patches, *layout), spec, rtol=0, atol=1e-12)
    stacked = torch.stack([patches, 2 * patches])  # K = 2 sources in front
    torch.testing.assert_close(unpatchify(stacked, *layout), torch.stack([spec, 2 * spec]), rtol=0, atol=1e-12)


def test_patchify_pads_the_end_and_unpatchify_averages_overlaps():
    spec = torch.ones(1, 4, 10)
    patches, layout = patchify(spec, 8, 4, pad_value=0.0)
    assert patches.shape == (2, 1, 4, 8) and patches[1, 0, :, 6:].abs().sum() == 0
    # each frame is a weighted mean of the patches covering it: constant patches c₀, c₁ give
    # values between c₀ and c₁ on the overlap and exactly c₀ / c₁ elsewhere
    out = unpatchify(torch.stack([torch.full((1, 4, 8), 1.0), torch.full((1, 4, 8), 3.0)]), *layout)
    torch.testing.assert_close(out[..., :4], torch.full((1, 4, 4), 1.0))
    torch.testing.assert_close(out[..., 8:], torch.full((1, 4, 2), 3.0))
    assert torch.all((out[..., 4:8] > 1.0) & (out[..., 4:8] < 3.0))
    assert torch.all(out[..., 4:8].diff(dim=-1) > 0)  # smooth cross-fade from c₀ to c₁
    with pytest.raises(ValueError):
        patchify(spec, 8, 9)
    with pytest.raises(ValueError):
        unpatchify(patches[:1], *layout)


# --- the one STFT settings type --------------------------------------------------------------

def test_stft_settings_validate_round_trip_and_are_what_every_front_end_holds():
    from audiosep.spectral.frontend import MagnitudeFrontend
    from audiosep.spectral.stft import STFTSettings

    settings = STFTSettings(512, 128, sample_rate=16000)
    assert settings.win_length == 512 and settings.n_freqs == 257
    assert STFTSettings.from_dict(settings.to_dict()) == settings
    x = torch.randn(2, 3000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(settings.istft(settings.stft(x), 3000), x, atol=1e-5, rtol=0)
    for bad, message in [(dict(n_fft=0, hop_length=1), "n_fft must be a positive integer"),
                         (dict(n_fft=256, hop_length=512), "must not exceed n_fft"),
                         (dict(n_fft=256, hop_length=64, window="kaiser"), "window must be one of"),
                         (dict(n_fft=256, hop_length=64, pad_mode="wrap"), "pad_mode must be one of")]:
        with pytest.raises(UserError, match=message):
            STFTSettings(**bad)
    with pytest.raises(UserError, match="expected STFT settings"):
        STFTSettings.from_dict({"kind": "mel"})
    with pytest.raises(UserError, match="malformed STFT settings"):
        STFTSettings.from_dict({"kind": "stft", "n_fft": 256, "hop": 64})
    fe = get_frontend("default")
    assert fe.stft_settings == STFTSettings(fe.n_fft, fe.hop_length, fe.win_length, fe.window, fe.center,
                                            fe.pad_mode, fe.sample_rate)
    torch.testing.assert_close(fe.stft(x), fe.stft_settings.stft(x), rtol=0, atol=0)
    assert dataclasses.replace(fe, n_fft=fe.n_fft).stft_settings == fe.stft_settings
    magnitude = MagnitudeFrontend()
    assert magnitude.stft_settings == STFTSettings(1024, 256, sample_rate=16000)  # centred, zero padded
    with pytest.raises(UserError, match="front end 'custom': the hop"):
        dataclasses.replace(fe, hop_length=fe.n_fft * 2, name="custom")
