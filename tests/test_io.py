import numpy as np
import pytest
import soundfile as sf

from audiosep.errors import UserError
from audiosep.io import atomic_output, convert_channels, read_audio, resample, write_audio


def _tone(sr=16000, seconds=0.5, freq=440.0, channels=2):
    t = np.arange(int(sr * seconds)) / sr
    return np.stack([np.sin(2 * np.pi * freq * t) * 0.5 * (c + 1) / channels for c in range(channels)]).astype(
        np.float32
    )


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_read_formats_shape_and_dtype(tmp_path, suffix):
    wav = _tone()
    path = tmp_path / f"x{suffix}"
    sf.write(path, wav.T, 16000)
    out, sr = read_audio(path)
    assert sr == 16000 and out.dtype == np.float32 and out.shape[0] == 2
    if suffix in (".wav", ".flac"):
        assert out.shape == wav.shape
        np.testing.assert_allclose(out, wav, atol=1e-4)
    else:  # lossy codecs: length may differ by the codec's padding
        assert abs(out.shape[1] - wav.shape[1]) < 3000


def test_write_read_roundtrip_exact(tmp_path):
    wav = _tone(channels=1)
    write_audio(tmp_path / "a.wav", wav, 16000)
    out, sr = read_audio(tmp_path / "a.wav")
    np.testing.assert_array_equal(out, wav)


def test_resample_preserves_tone_and_length():
    sr_in, sr_out = 44100, 16000
    wav = _tone(sr=sr_in, seconds=1.0, freq=1000.0, channels=1)
    out = resample(wav, sr_in, sr_out)
    assert out.shape == (1, 16000)
    ref = _tone(sr=sr_out, seconds=1.0, freq=1000.0, channels=1)
    core = slice(200, -200)  # ignore filter edges
    assert np.max(np.abs(out[0, core] - ref[0, core])) < 1e-3


def test_read_with_rate_and_channels(tmp_path):
    sf.write(tmp_path / "s.wav", _tone(sr=22050).T, 22050)
    out, sr = read_audio(tmp_path / "s.wav", sample_rate=16000, channels=1)
    assert sr == 16000 and out.shape == (1, 8000)


def test_convert_channels():
    st = _tone(channels=2)
    np.testing.assert_allclose(convert_channels(st, 1)[0], st.mean(0))
    mono = st[:1]
    assert np.array_equal(convert_channels(mono, 2), np.vstack([mono, mono]))
    with pytest.raises(UserError):
        convert_channels(st, 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("this is not audio at all"), "not a readable audio file"),
        (lambda p: sf.write(p, np.zeros((0, 1)), 16000), "no audio samples"),
        (lambda p: sf.write(p, np.array([[0.0], [np.nan], [np.inf]]), 16000, subtype="FLOAT"), "NaN"),
    ],
    ids=["missing", "directory", "empty", "not-audio", "no-samples", "nan"],
)
def test_bad_inputs_are_one_line_user_errors(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(UserError) as err:
        read_audio(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_atomic_output_leaves_original_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("original")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_write_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_audio(tmp_path / "n.wav", np.full((1, 10), np.nan, np.float32), 16000)
    assert not list(tmp_path.iterdir())


def test_atomic_output_has_the_usual_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    write_audio(tmp_path / "p.wav", _tone(channels=1), 16000)
    assert stat.S_IMODE((tmp_path / "p.wav").stat().st_mode) == 0o666 & ~mask
