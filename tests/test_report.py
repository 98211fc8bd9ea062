"""Report tables: museval-compatible long table, per-track JSON, summaries, evaluate_dirs."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from audiosep.errors import UserError
from audiosep.eval import report
from audiosep.io import write_audio

museval = pytest.importorskip("museval")
simplejson = pytest.importorskip("simplejson")
jsonschema = pytest.importorskip("jsonschema")

SR = 8000


def _scores(seed: int, n_src: int = 2, n_win: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.uniform(-5, 20, size=(n_src, n_win)) for m in ("SDR", "ISR", "SIR", "SAR")}


def _frame(track="t1", targets=("vocals", "drums"), hop=0.5, method="m", seed=0, scores=None):
    s = scores or _scores(seed, len(targets))
    return report.track_frame(track, list(targets), s["SDR"], s["ISR"], s["SIR"], s["SAR"], hop, method)


def test_track_frame_columns_times_and_values():
    s = _scores(1)
    s["SIR"][1, 2] = np.nan
    s["SAR"][0, 1] = np.inf
    df = _frame(scores=s, hop=0.5)
    assert list(df.columns) == ["time", "target", "metric", "score", "track", "method"]
    assert len(df) == 2 * 4 * 3
    assert set(df["metric"]) == {"SDR", "SIR", "ISR", "SAR"}
    assert (df["track"] == "t1").all() and (df["method"] == "m").all()
    rows = df[(df.target == "drums") & (df.metric == "ISR")]
    np.testing.assert_allclose(rows["time"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(rows["score"], s["ISR"][1])
    sir = df[(df.target == "drums") & (df.metric == "SIR")]["score"].to_numpy()
    assert np.isnan(sir[2]) and np.isfinite(sir[:2]).all()
    # museval's stores turn non-finite scores into NaN
    sar = df[(df.target == "vocals") & (df.metric == "SAR")]["score"].to_numpy()
    assert np.isnan(sar[1])


def test_summarize_medians_by_hand():
    rows = []
    # track A: SDR windows 1, 2, 10, NaN → median 2; track B: 4, 6 → 5; track C: all NaN.
    for track, values in {"A": [1, 2, 10, np.nan], "B": [4, 6], "C": [np.nan, np.nan]}.items():
        for i, v in enumerate(values):
            rows.append(
                {"time": float(i), "target": "bass", "metric": "SDR", "score": v, "track": track, "method": "x"}
            )
    # a second method on track A only
    for i, v in enumerate([3.0, 7.0, 8.0]):
        rows.append({"time": float(i), "target": "bass", "metric": "SDR", "score": v, "track": "A", "method": "y"})
    summary = report.summarize(pd.DataFrame(rows))
    assert list(summary.columns) == ["method", "target", "metric", "score", "n_tracks"]
    x = summary[summary.method == "x"].iloc[0]
    assert x["score"] == pytest.approx(3.5)  # median of track medians 2 and 5 (C is NaN)
    assert x["n_tracks"] == 2
    y = summary[summary.method == "y"].iloc[0]
    assert y["score"] == pytest.approx(7.0) and y["n_tracks"] == 1


def test_summary_matches_museval_evalstore():
    df = pd.concat([_frame(track=f"t{i}", seed=i) for i in range(3)], ignore_index=True)
    store = museval.EvalStore()
    store.add_track(df.drop(columns="method"))
    expected = store.agg_frames_tracks_scores()
    summary = report.summarize(df).set_index(["target", "metric"])["score"]
    for (target, metric), value in expected.items():
        assert summary[(target, metric)] == pytest.approx(value)


def test_write_csv_roundtrip_keeps_nan(tmp_path):
    s = _scores(2)
    s["SDR"][0, 0] = np.nan
    df = _frame(scores=s)
    path = report.write_csv(df, tmp_path / "out" / "report.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == report.COLUMNS
    np.testing.assert_allclose(back["score"], df["score"], rtol=1e-12)
    assert back["score"].isna().sum() == 1
    assert [p.name for p in path.parent.iterdir()] == ["report.csv"]  # no temporary left behind


def test_write_summary_csv(tmp_path):
    df = pd.concat([_frame(track=f"t{i}", seed=i) for i in range(2)], ignore_index=True)
    summary = report.write_summary_csv(df, tmp_path / "summary.csv")
    back = pd.read_csv(tmp_path / "summary.csv")
    assert list(back.columns) == report.SUMMARY_COLUMNS
    np.testing.assert_allclose(back["score"], summary["score"])


def test_test_set_summaries_gather_systems_and_oracles_per_test_set(tmp_path):
    def summary_at(folder, method, sdr):
        folder.mkdir(parents=True)
        rows = [{"method": method, "target": t, "metric": "SDR", "score": sdr + k, "n_tracks": 2}
                for k, t in enumerate(("bass", "drums"))]
        pd.DataFrame(rows, columns=report.SUMMARY_COLUMNS).to_csv(folder / "summary.csv", index=False)

    summary_at(tmp_path / "unseen" / "latent" / "report", "latent", 9.0)
    summary_at(tmp_path / "unseen" / "oracle_irm2", "irm2", 12.0)
    summary_at(tmp_path / "fluidr3" / "oracle_mix", "mix", 3.0)
    summary_at(tmp_path / "priors" / "report", "not a test set", 0.0)  # no oracle run: skipped
    tables = report.test_set_summaries(tmp_path)
    assert list(tables) == ["fluidr3", "unseen"]
    assert tables["unseen"].loc[("latent", "drums"), "SDR"] == 10.0
    assert tables["unseen"].loc[("irm2", "bass"), "SDR"] == 12.0
    assert list(tables["fluidr3"].index) == [("mix", "bass"), ("mix", "drums")]


def test_track_json_equals_museval_trackstore(tmp_path):
    s = _scores(3, n_win=4)
    s["SIR"][0, 3] = np.nan
    targets = ["vocals", "accompaniment"]
    win, hop = 1.0, 0.5
    df = _frame(targets=targets, scores=s, hop=hop)
    path = report.write_track_json(df, tmp_path / "t1.json", win_seconds=win)

    ours = simplejson.loads(path.read_text(), allow_nan=True)
    schema_path = f"{museval.__path__[0]}/musdb.schema.json"
    with open(schema_path) as f:
        jsonschema.validate(ours, simplejson.load(f))

    store = museval.TrackStore("t1", win=win, hop=hop)
    for k, name in enumerate(targets):
        store.add_target(name, {m: s[m][k].tolist() for m in ("SDR", "SIR", "ISR", "SAR")})
    theirs = simplejson.loads(store.json, allow_nan=True)
    assert [t["name"] for t in ours["targets"]] == [t["name"] for t in theirs["targets"]]
    for ot, tt in zip(ours["targets"], theirs["targets"]):
        assert len(ot["frames"]) == len(tt["frames"]) == 4
        for of, tf in zip(ot["frames"], tt["frames"]):
            assert of["time"] == pytest.approx(float(tf["time"]))
            assert of["duration"] == pytest.approx(float(tf["duration"]))
            assert list(of["metrics"]) == list(tf["metrics"])
            for m, v in tf["metrics"].items():
                if math.isnan(float(v)):
                    assert math.isnan(of["metrics"][m])
                else:
                    assert of["metrics"][m] == pytest.approx(float(v), abs=1e-12)
    assert set(ours) == set(theirs)

    # museval's own JSON reader gives back our table (scores rounded to 1e-5)
    back = museval.aggregate.json2df(json.loads(path.read_text()), "t1")
    merged = back.merge(df, on=["time", "target", "metric"], suffixes=("_json", ""))
    assert len(merged) == len(df)
    np.testing.assert_allclose(merged["score_json"], merged["score"], atol=1e-5)


def test_track_json_rejects_several_tracks():
    df = pd.concat([_frame(track="a"), _frame(track="b")], ignore_index=True)
    with pytest.raises(ValueError, match="one track"):
        report.track_json(df, 1.0)


def _write_track(root, track, sources: dict[str, np.ndarray], rate=SR):
    for name, wav in sources.items():
        write_audio(root / track / f"{name}.wav", wav, rate)


def _signals(seed, n_src=2, channels=1, seconds=1.25):
    rng = np.random.default_rng(seed)
    refs = 0.1 * rng.standard_normal((n_src, channels, int(seconds * SR))).astype(np.float32)
    ests = (refs + 0.03 * rng.standard_normal(refs.shape)).astype(np.float32)
    return refs, ests


def test_evaluate_dirs_matches_museval(tmp_path):
    refs, ests = _signals(0)
    names = ["bass", "drums"]
    _write_track(tmp_path / "ref", "song", {**dict(zip(names, refs)), "mix": refs.sum(0)})
    # estimates one sample short (padded like museval) plus an unrelated file
    _write_track(tmp_path / "est", "song", {n: e[:, :-1] for n, e in zip(names, ests)} | {"extra": ests[0]})
    df = report.evaluate_dirs(tmp_path / "ref", tmp_path / "est", win_seconds=0.5, hop_seconds=0.25,
                              method="test", progress=False)
    assert list(df.columns) == report.COLUMNS
    assert set(df["target"]) == set(names)
    assert (df["method"] == "test").all() and (df["track"] == "song").all()
    sdr, isr, sir, sar = museval.evaluate(
        refs.transpose(0, 2, 1), ests[:, :, :-1].transpose(0, 2, 1), win=SR // 2, hop=SR // 4
    )
    expected = {"SDR": sdr, "ISR": isr, "SIR": sir, "SAR": sar}
    for metric, values in expected.items():
        for k, name in enumerate(names):
            rows = df[(df.target == name) & (df.metric == metric)].sort_values("time")
            np.testing.assert_allclose(rows["score"], values[k], atol=1e-6)
            np.testing.assert_allclose(rows["time"], np.arange(values.shape[1]) * 0.25)


@pytest.fixture
def good_track(tmp_path):
    refs, ests = _signals(1)
    _write_track(tmp_path / "ref", "song", {"a": refs[0], "b": refs[1], "mixture": refs.sum(0)})
    _write_track(tmp_path / "est", "song", {"a": ests[0], "b": ests[1]})
    return tmp_path, refs, ests


def test_missing_estimate_names_file(good_track):
    root, _, _ = good_track
    (root / "est" / "song" / "b.wav").unlink()
    with pytest.raises(UserError, match=r"song/b\.wav.*missing estimate"):
        report.evaluate_dirs(root / "ref", root / "est", progress=False)


def test_estimates_in_any_format_separate_writes(good_track):
    root, _, ests = good_track
    wav = report.evaluate_dirs(root / "ref", root / "est", progress=False)
    (root / "est" / "song" / "b.wav").unlink()
    write_audio(root / "est" / "song" / "b.flac", ests[1], SR, subtype="PCM_24")  # what separate --format flac writes
    flac = report.evaluate_dirs(root / "ref", root / "est", progress=False)
    a_wav, a_flac = (t.query("target == 'a' and metric == 'SDR'")["score"].to_numpy() for t in (wav, flac))
    np.testing.assert_array_equal(a_wav, a_flac)  # the untouched stem scores alike
    write_audio(root / "est" / "song" / "b.wav", ests[1], SR)
    with pytest.raises(UserError, match="2 estimates of 'b' \\(b.wav, b.flac\\); keep one"):
        report.evaluate_dirs(root / "ref", root / "est", progress=False)


def test_rate_mismatch_names_file(good_track):
    root, _, ests = good_track
    write_audio(root / "est" / "song" / "a.wav", ests[0], SR * 2)
    with pytest.raises(UserError, match=r"song/a\.wav: sample rate 16000 Hz differs"):
        report.evaluate_dirs(root / "ref", root / "est", progress=False)


def test_channel_mismatch_names_file(good_track):
    root, _, ests = good_track
    write_audio(root / "est" / "song" / "b.wav", np.repeat(ests[1], 2, axis=0), SR)
    with pytest.raises(UserError, match=r"song/b\.wav: 2 channel\(s\)"):
        report.evaluate_dirs(root / "ref", root / "est", progress=False)


@pytest.mark.parametrize("which", ["ref", "est"])
def test_a_silent_stem_scores_nan_for_its_target_only(good_track, which):
    root, refs, ests = good_track
    write_audio(root / which / "song" / "b.wav", np.zeros_like(refs[1]), SR)
    with pytest.warns(UserWarning, match="song/b: reference or estimate silent"):
        df = report.evaluate_dirs(root / "ref", root / "est", progress=False)
    assert df[df.target == "b"].score.isna().all()
    alone = report.score_track("song", ["a"], refs[:1], ests[:1], SR)  # a scored against the other references
    np.testing.assert_allclose(df[df.target == "a"].score.to_numpy(), alone.score.to_numpy())


def test_estimate_lengths_within_a_second_are_fitted_with_a_warning_else_refused(good_track):
    root, refs, ests = good_track
    write_audio(root / "est" / "song" / "a.wav", ests[0][:, :-100], SR)
    with pytest.warns(UserWarning, match=r"song/a\.wav: .* zero-padded"):
        report.evaluate_dirs(root / "ref", root / "est", progress=False)
    write_audio(root / "est" / "song" / "a.wav", np.pad(ests[0], ((0, 0), (0, 2 * SR))), SR)
    with pytest.raises(UserError, match=r"song/a\.wav: .*not the same take"):
        report.evaluate_dirs(root / "ref", root / "est", progress=False)


def test_missing_folders_and_empty_tracks(tmp_path):
    with pytest.raises(UserError, match="no such reference folder"):
        report.evaluate_dirs(tmp_path / "nope", tmp_path, progress=False)
    (tmp_path / "ref").mkdir()
    with pytest.raises(UserError, match="no track folders"):
        report.evaluate_dirs(tmp_path / "ref", tmp_path, progress=False)
    write_audio(tmp_path / "ref" / "song" / "mix.wav", np.ones((1, 100), np.float32) * 0.1, SR)
    with pytest.raises(UserError, match="no target stems"):
        report.evaluate_dirs(tmp_path / "ref", tmp_path, progress=False)
