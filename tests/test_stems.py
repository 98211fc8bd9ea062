import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from audiosep.data import SourceCrops, SourcePatches, detect_layout, list_sources, list_tracks, load_track
from audiosep.errors import UserError

SR = 8000


def _noise(seed, seconds=2.0, channels=1, silent_until=0.0):
    """Gaussian noise (samples, channels) at 0.1 RMS, zero before `silent_until` seconds."""
    x = 0.1 * np.random.default_rng(seed).standard_normal((int(seconds * SR), channels)).astype(np.float32)
    x[: int(silent_until * SR)] = 0
    return x


def _write(path, x, sr=SR, subtype="FLOAT"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype)


@pytest.fixture
def stems_root(tmp_path):
    """stems layout: train/{t0,t1}, valid/v0 with sources a (silent first second) and b."""
    root = tmp_path / "stems"
    for i, (split, name) in enumerate([("train", "t0"), ("train", "t1"), ("valid", "v0")]):
        a, b = _noise(10 * i, silent_until=1.0), _noise(10 * i + 1)
        for source, x in (("a", a), ("b", b), ("mix", a + b)):
            _write(root / split / name / f"{source}.wav", x)
    return root


@pytest.fixture
def musdb_root(tmp_path):
    root = tmp_path / "musdb"
    for i, (split, name) in enumerate([("train", "Artist - Song"), ("test", "Other - Tune")]):
        stems = {s: _noise(i * 5 + k, channels=2) for k, s in enumerate(("vocals", "drums", "bass", "other"))}
        stems["mixture"] = sum(stems.values())
        for source, x in stems.items():
            _write(root / split / name / f"{source}.wav", x)
    return root


@pytest.fixture
def slakh_root(tmp_path):
    """Slakh layout: two piano stems (summed), one chromatic percussion, one unrendered stem."""
    root = tmp_path / "slakh"
    for i, split in enumerate(["train", "validation"]):
        track = root / split / f"Track0000{i + 1}"
        stems = {f"S0{k}": _noise(20 * i + k) for k in range(3)}
        for stem_id, x in stems.items():
            _write(track / "stems" / f"{stem_id}.flac", x, subtype="PCM_24")
        _write(track / "mix.flac", sum(stems.values()), subtype="PCM_24")
        meta = {"audio_dir": "stems", "stems": {
            "S00": {"inst_class": "Piano", "audio_rendered": True, "is_drum": False},
            "S01": {"inst_class": "Piano", "audio_rendered": True, "is_drum": False},
            "S02": {"inst_class": "Chromatic Percussion", "audio_rendered": True, "is_drum": False},
            "S03": {"inst_class": "Bass", "audio_rendered": False, "is_drum": False},
        }}
        (track / "metadata.yaml").write_text(yaml.safe_dump(meta))
    return root


def test_layouts_tracks_and_sources(stems_root, musdb_root, slakh_root):
    assert [detect_layout(r) for r in (stems_root, musdb_root, slakh_root)] == ["stems", "musdb", "slakh"]
    tracks = list_tracks(stems_root)
    assert [(t.split, t.name) for t in tracks] == [("train", "t0"), ("train", "t1"), ("valid", "v0")]
    assert list_sources(tracks) == ["a", "b"] and tracks[0].mix.name == "mix.wav"
    musdb = list_tracks(musdb_root, split="test")
    assert [t.name for t in musdb] == ["Other - Tune"] and list_sources(musdb) == ["bass", "drums", "other", "vocals"]
    slakh = list_tracks(slakh_root, split="valid")  # "valid" names Slakh's validation split
    assert [(t.split, t.name) for t in slakh] == [("validation", "Track00002")]
    assert list_sources(slakh) == ["chromatic_percussion", "piano"]
    assert [p.name for p in slakh[0].sources["piano"]] == ["S00.flac", "S01.flac"]


def test_slakh_sources_sum_stems_of_one_class(slakh_root):
    (track,) = list_tracks(slakh_root, split="train")
    mix, sources, sr = load_track(track)
    stem = {k: sf.read(str(track.mix.parent / "stems" / f"S0{k}.flac"), dtype="float32")[0] for k in range(3)}
    assert sr == SR and mix.shape == (1, 2 * SR)
    np.testing.assert_allclose(sources["piano"][0], stem[0] + stem[1], atol=1e-7)
    np.testing.assert_allclose(sources["chromatic_percussion"][0], stem[2], atol=1e-7)
    np.testing.assert_allclose(mix[0], sf.read(str(track.mix), dtype="float32")[0], atol=1e-7)


def test_load_track_resamples_and_converts_channels(musdb_root):
    (track,) = list_tracks(musdb_root, split="train")
    mix, sources, sr = load_track(track, sample_rate=16000, channels=1)
    vocals = sf.read(str(track.sources["vocals"][0]), dtype="float32")[0].mean(axis=1)
    expected = librosa.resample(vocals, orig_sr=SR, target_sr=16000, res_type="soxr_vhq")
    assert sr == 16000 and mix.shape == sources["vocals"].shape == (1, 4 * SR)
    np.testing.assert_allclose(sources["vocals"][0], expected, atol=1e-5)


def test_crops_are_segments_of_the_source(stems_root):
    crops = SourceCrops(stems_root, "b", split="train", crop_samples=2000, sample_rate=SR, length=8, seed=3)
    assert len(crops) == 8
    for i in range(len(crops)):
        track, start, _ = crops.locate(i)
        x = crops[i]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (1, 2000)
        assert 0 <= start <= 2 * SR - 2000 and track.split == "train"
        expected = sf.read(str(track.sources["b"][0]), start=start, stop=start + 2000, dtype="float32")[0]
        np.testing.assert_array_equal(x[0].numpy(), expected)


def test_resampled_crops_match_whole_file_resampling(slakh_root):
    crops = SourceCrops(slakh_root, "piano", crop_samples=3000, sample_rate=22050, length=4, seed=0)
    (track,) = crops.tracks
    whole = sum(sf.read(str(p), dtype="float32")[0] for p in track.sources["piano"])
    expected = librosa.resample(whole, orig_sr=SR, target_sr=22050, res_type="soxr_vhq")
    for i in range(len(crops)):
        _, start, crop = crops.locate(i)
        np.testing.assert_allclose(crop[0], expected[start : start + 3000], atol=1e-5)


def test_silent_crops_are_skipped(stems_root):
    crops = SourceCrops(stems_root, "a", crop_samples=800, sample_rate=SR, length=40, seed=0, min_rms_db=-40)
    starts = [crops.locate(i)[1] for i in range(len(crops))]
    rms_db = [10 * np.log10(np.mean(crops[i].numpy().astype(np.float64) ** 2)) for i in range(len(crops))]
    assert min(rms_db) >= -40 and max(starts) > SR  # "a" is silent over its first second
    assert min(starts) > SR - 800  # no crop lies wholly in the silence


def test_crops_are_deterministic_by_seed_and_epoch(stems_root):
    def make(seed):
        return SourceCrops(stems_root, "b", crop_samples=1000, sample_rate=SR, length=5, seed=seed)

    first, same, other = make(0), make(0), make(1)
    batch = torch.stack([first[i] for i in range(5)])
    assert torch.equal(batch, torch.stack([same[i] for i in range(5)]))
    assert not torch.equal(batch, torch.stack([other[i] for i in range(5)]))
    same.set_epoch(1)
    assert not torch.equal(batch, torch.stack([same[i] for i in range(5)]))


def test_patches_through_a_frontend(stems_root):
    n_mels, hop = 16, 128

    def frontend(wav):  # any callable waveform → [0, 1] mel; here librosa's
        mel = librosa.feature.melspectrogram(y=wav.numpy(), sr=SR, n_fft=512, hop_length=hop, n_mels=n_mels)
        return torch.from_numpy(np.clip((librosa.power_to_db(mel, ref=1.0) + 100) / 120, 0, 1))

    crops = SourceCrops(stems_root, "b", crop_samples=31 * hop, sample_rate=SR, length=3)
    patches = SourcePatches(crops, frontend, frames=30)
    assert len(patches) == 3
    for i in range(3):
        patch = patches[i]
        assert patch.shape == (1, n_mels, 30) and patch.dtype == torch.float32
        torch.testing.assert_close(patch, frontend(crops[i])[..., :30].float())
    with pytest.raises(ValueError, match="fewer than 40"):
        SourcePatches(crops, frontend, frames=40)[0]
    stereo = SourceCrops(stems_root, "b", crop_samples=1000, sample_rate=SR, channels=2)
    with pytest.raises(UserError, match="mono"):
        SourcePatches(stereo, frontend)


def test_bad_inputs_are_user_errors(tmp_path, stems_root):
    with pytest.raises(UserError, match="no such dataset folder"):
        list_tracks(tmp_path / "missing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="no tracks found"):
        list_tracks(tmp_path / "empty")
    with pytest.raises(UserError, match="no split 'test'"):
        list_tracks(stems_root, split="test")
    with pytest.raises(UserError, match="no track has source 'vocals'"):
        SourceCrops(stems_root, "vocals")
    with pytest.raises(UserError, match="unknown dataset layout"):
        list_tracks(stems_root, layout="medleydb")
    _write(stems_root / "train" / "t2" / "quiet.wav", np.zeros((SR, 1), np.float32))
    with pytest.raises(UserError, match="no crop above"):
        SourceCrops(stems_root, "quiet", crop_samples=100, max_tries=5)[0]
