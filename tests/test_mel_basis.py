"""MelBasis (BASIS on mel spectrograms as a Separator method) and `audiosep separate` with
prior checkpoints. Analytic Gaussian priors check the separation itself; tiny untrained
NCSNv2 checkpoints check the wiring end to end (files, formats, errors, seeds)."""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.cli import main
from audiosep.errors import UserError
from audiosep.priors import Domain, NCSNv2, Prior, load_prior, save_checkpoint, sigma_per_sample
from audiosep.priors.masknet import load_masknet
from audiosep.separation import MelBasis, NMFModel, separation_method
from audiosep.separation.basis import BasisConfig, fit_schedule
from audiosep.separation.mel_basis import baseline_mismatch, default_basis
from audiosep.spectral.frontend import Frontend, get_frontend, patchify
from audiosep.zoo import bundled

# A small front end for the analytic tests: every STFT bin is covered by a mel band
# (fmin 0, fmax = Nyquist), so Wiener masks lose nothing.
TINY = Frontend(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, fmin=0.0, patch_frames=32, name="tiny")


class GaussianPrior(Prior):
    """N(μ, s²) per element of a [0, 1] mel patch; smoothed by σ: score −(x − μ)/(s² + σ²).

    μ is `(1, 1, 1, 1)` (one value everywhere) or `(B, 1, F, P)` (one per patch); the
    batch BASIS passes may hold several copies of the B patches (chains), tiled here.
    """

    def __init__(self, mean: torch.Tensor, std: float, frontend: Frontend = TINY) -> None:
        super().__init__(Domain.mel(frontend))
        self.mean, self.std = mean, std

    def score(self, x, sigma):
        sigma = sigma_per_sample(sigma, x).view(-1, 1, 1, 1)
        mean = self.mean.repeat(x.shape[0] // self.mean.shape[0], 1, 1, 1)
        return -(x - mean) / (self.std**2 + sigma**2)


def _sources(sr, seconds=2.0, seed=0):
    """Two float32 signals `(N,)`: a 300 Hz tone with a slow tremolo, and a 2.2 kHz tone from
    0.7 s on; each with a little white noise so no mel band is silent."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    a = 0.1 * np.sin(2 * np.pi * 300 * t) * (1 + 0.5 * np.sin(2 * np.pi * 1.3 * t))
    b = 0.1 * np.sin(2 * np.pi * 2200 * t) * (t > 0.7)
    noise = 0.003 * rng.standard_normal((2, t.size))
    return [torch.tensor(s + n, dtype=torch.float32) for s, n in zip((a, b), noise)]


def _sdr(reference, estimate):
    return 10 * math.log10(float(reference.square().sum() / (reference - estimate).square().sum()))


def test_separated_mel_powers_add_up_to_the_mixture():
    # Broad priors (s = 0.3) far from the data: the mixture constraint decides the sum.
    # At the last level BASIS samples the likelihood N(m; g(x), γ²/c) with γ = σ_L = 0.01
    # and c = 2 (BasisConfig defaults), a residual of std 0.01/√2 units = 0.85 dB per bin
    # (120 dB per unit). Averaging overlapping patches in power keeps Σₖ powers = mixture
    # power for each patch; averaging them in dB instead breaks it (RMS ≈ 5 dB here).
    a, b = _sources(TINY.sample_rate)
    mix_mel = TINY.mel_power(a + b)
    priors = [GaussianPrior(torch.full((1, 1, 1, 1), mu), 0.3) for mu in (0.5, 0.4)]
    config = BasisConfig(n_levels=4, steps_per_level=50)
    mel = MelBasis(priors, config, ["a", "b"], progress=False).separate_mel(mix_mel)
    assert mel.shape == (2, *mix_mel.shape) and (mel > 0).all()
    error_db = 10 * torch.log10(mel.sum(dim=0) / mix_mel)
    assert error_db.pow(2).mean().sqrt() < 1.0  # the 0.85 dB likelihood width
    assert error_db.mean().abs() < 0.15  # unbiased: ≈ 0.85 dB / √(4000 bins) · patch correlation
    assert error_db.abs().max() < 5.0  # ≈ 6 standard deviations


def test_oracle_gaussian_priors_recover_the_sources():
    # Priors centred on the true sources' [0, 1] mel patches (s = 0.02, 2.4 dB) make the
    # posterior concentrate on the truth: the stems (Wiener masks from the mel estimates)
    # must match the true sources in order, and add up to the mixture.
    a, b = _sources(TINY.sample_rate)
    hop = TINY.patch_frames // 2
    priors = [GaussianPrior(patchify(TINY.encode(s), TINY.patch_frames, hop)[0], 0.02) for s in (a, b)]
    method = MelBasis(priors, BasisConfig(n_levels=4, steps_per_level=50), ["a", "b"], hop_frames=hop,
                      batch_patches=None, progress=False)  # the priors know every patch: one batch
    mix = (a + b)[None]
    stems = method(mix)
    assert stems.shape == (2, 1, mix.shape[1]) and stems.dtype == torch.float32
    assert _sdr(a, stems[0, 0]) > 20 and _sdr(b, stems[1, 0]) > 20  # measured 26.6 / 23.8 dB
    assert _sdr(mix[0], stems.sum(dim=0)[0]) > 40  # Wiener: Σ stems = mixture (measured 46 dB)


class FixedStems:
    """A baseline `Separator` method that returns given stems `(K, N)` whatever the mixture."""

    def __init__(self, stems, sources=("a", "b"), sample_rate=TINY.sample_rate):
        self.stems, self.sources, self.sample_rate = stems, tuple(sources), sample_rate

    def __call__(self, mix):
        return self.stems[:, None].to(mix)


def test_baseline_initialisation_starts_the_chains_and_the_nnls():
    # Broad priors far from the data (as above) and a short low-σ schedule: from U(0, 1) the
    # chains cannot reach the sources, from the true stems (the baseline) they stay there,
    # and the NNLS started from the baseline's STFT powers keeps the within-band detail.
    a, b = _sources(TINY.sample_rate)
    mix = (a + b)[None]
    priors = [GaussianPrior(torch.full((1, 1, 1, 1), mu), 0.3) for mu in (0.5, 0.4)]
    config = BasisConfig(sigmas=(0.02, 0.01), steps_per_level=20)
    plain = MelBasis(priors, config, ["a", "b"], progress=False)(mix)
    started = MelBasis(priors, config, ["a", "b"], init_from=FixedStems(torch.stack([a, b])), progress=False)(mix)
    sdr_plain = [_sdr(s, e[0]) for s, e in zip((a, b), plain)]
    sdr_started = [_sdr(s, e[0]) for s, e in zip((a, b), started)]
    assert min(sdr_started) > 20 and max(sdr_plain) < 10, (sdr_started, sdr_plain)  # 25.3, 22.5 vs 2.8, 0.0
    with pytest.raises(UserError, match="separates b, a, but the priors are a, b"):
        MelBasis(priors, config, ["a", "b"], init_from=FixedStems(torch.stack([a, b]), ("b", "a")))
    with pytest.raises(UserError, match="runs at 16000 Hz, the priors' front end at 8000 Hz"):
        MelBasis(priors, config, ["a", "b"], init_from=FixedStems(torch.stack([a, b]), sample_rate=16000))


def test_stereo_mixture_keeps_its_image():
    # Source a is panned left (right channel 0.25 a), b is centred. Separation runs on the
    # channel mean; the Wiener masks then apply to each channel, so each stem keeps its own
    # channel balance instead of a mono copy.
    a, b = _sources(TINY.sample_rate)
    hop = TINY.patch_frames // 2
    priors = [GaussianPrior(patchify(TINY.encode(0.625 * s if s is a else s), TINY.patch_frames, hop)[0], 0.02)
              for s in (a, b)]
    mix = torch.stack([a + b, 0.25 * a + b])
    stems = MelBasis(priors, BasisConfig(n_levels=4, steps_per_level=50), ["a", "b"], hop_frames=hop,
                     batch_patches=None, progress=False)(mix)
    assert stems.shape == (2, 2, mix.shape[1])
    assert _sdr(a, stems[0, 0]) > 15 and _sdr(0.25 * a, stems[0, 1]) > 15  # measured 26.5, 21.2
    assert _sdr(b, stems[1, 0]) > 15 and _sdr(b, stems[1, 1]) > 15  # measured 23.7, 30.4


class FixedLevels(GaussianPrior):
    """A Gaussian prior that answers only for the given σ (like a per-σ flow bundle)."""

    def __init__(self, sigmas):
        super().__init__(torch.full((1, 1, 1, 1), 0.5), 0.3)
        self.levels = tuple(sigmas)

    @property
    def fixed_sigmas(self):
        return self.levels

    def score(self, x, sigma):
        assert any(abs(sigma - s) <= 1e-4 * s for s in self.levels), sigma
        return super().score(x, sigma)


def test_schedule_moves_onto_the_levels_fixed_priors_answer_for():
    bundle = [1.0, 0.599, 0.359, 0.215, 0.129, 0.0774, 0.0464, 0.0278, 0.0167, 0.01]
    both = [FixedLevels(bundle), FixedLevels(bundle[2:])]
    mixture = default_basis("mixture")  # σ 0.3 → 0.01 over 7 levels: not bundle levels
    assert fit_schedule(mixture, both).noise_levels() == bundle[3:]
    assert fit_schedule(default_basis("nmf"), both).noise_levels() == bundle[6:]
    assert fit_schedule(BasisConfig(), both).noise_levels() == bundle[2:]  # the common levels
    inside = BasisConfig(sigmas=(0.359, 0.0464, 0.01))
    assert fit_schedule(inside, both) is inside  # already on the grid: unchanged
    free = [GaussianPrior(torch.full((1, 1, 1, 1), 0.5), 0.3)] * 2
    assert fit_schedule(mixture, free) is mixture
    with pytest.raises(UserError, match="fewer than two of them lie in the schedule's range 0.01 to 0.012"):
        fit_schedule(BasisConfig(sigma_max=0.012), both)
    a, b = _sources(TINY.sample_rate)
    method = MelBasis(both, sources=["a", "b"], progress=False)
    assert method.config.noise_levels() == bundle[3:]
    method.separate_mel(TINY.mel_power(a + b))  # every score call at a bundle level (asserted)


def test_method_attributes_and_argument_errors():
    priors = [GaussianPrior(torch.full((1, 1, 1, 1), 0.5), 0.3) for _ in range(2)]
    method = MelBasis(priors, sources=["x", "y"])
    assert (method.sources, method.sample_rate, method.channels) == (("x", "y"), 8000, None)
    assert method.level_db == -17.0 and method.hop_frames == 16 and method.frontend == TINY
    assert MelBasis(priors, level_db=-23.0).level_db == -23.0
    other = GaussianPrior(torch.zeros(1, 1, 1, 1), 0.3, get_frontend("audiosourcesep"))
    for kwargs, message in [
        (dict(priors=priors[:1]), "two or more sources"),
        (dict(priors=priors, sources=["x", "x"]), "given twice"),
        (dict(priors=[priors[0], other]), "prior 0 and prior 1 were trained on different mel front ends"),
        (dict(priors=priors, inversion="istft"), "unknown inversion"),
        (dict(priors=priors, hop_frames=33), "patch hop"),
        (dict(priors=priors, config=BasisConfig(n_levels=1)), "at least 2 noise levels"),
    ]:
        with pytest.raises(UserError, match=message):
            MelBasis(**kwargs)


# --- the command line with tiny NCSNv2 checkpoints ----------------------------------------

SR = 16000


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """piano.pt, violin.pt (audiosourcesep front end), other.pt (default front end): untrained nf = 4 NCSNv2."""
    folder = tmp_path_factory.mktemp("priors")
    paths = {}
    for seed, (name, preset) in enumerate([("piano", "audiosourcesep"), ("violin", "audiosourcesep"),
                                           ("other", "default")]):
        torch.manual_seed(seed)
        paths[name] = save_checkpoint(folder / f"{name}.pt", NCSNv2(nf=4), Domain.mel(get_frontend(preset)))
    return paths


@pytest.fixture(scope="module")
def mixtures(tmp_path_factory):
    """mono16k.wav (16 kHz, 1 channel) and stereo22k.wav (22.05 kHz, 2 channels), 2 s each."""
    folder = tmp_path_factory.mktemp("mixtures")
    a, b = _sources(SR)
    sf.write(folder / "mono16k.wav", (a + b).numpy(), SR, subtype="FLOAT")
    a, b = _sources(22050, seed=1)
    sf.write(folder / "stereo22k.wav", torch.stack([a + b, 0.5 * a + b], dim=1).numpy(), 22050, subtype="FLOAT")
    return folder / "mono16k.wav", folder / "stereo22k.wav"


def _run(*argv):
    return main([str(a) for a in argv])


def _basis(mixtures, checkpoints, out, *extra):
    """`audiosep separate` with the tiny priors, into out/<track>/ (the model set named out.name)."""
    return _run("separate", *mixtures, "-o", out.parent, "-n", out.name, "--model", checkpoints["piano"], checkpoints["violin"],
                "--steps", 2, "--levels", 2, *extra)


def test_separate_with_priors_end_to_end(mixtures, checkpoints, tmp_path):
    assert _basis(mixtures, checkpoints, tmp_path / "sep") == 0
    for path in mixtures:
        info = sf.info(path)
        for source in ("piano", "violin"):
            out = sf.info(tmp_path / "sep" / path.stem / f"{source}.wav")
            assert (out.samplerate, out.frames, out.channels) == (info.samplerate, info.frames, info.channels)


def test_wiener_stems_add_up_to_the_mixture(mixtures, checkpoints, tmp_path):
    # Wiener masks that sum to one give Σ stems = iSTFT(STFT(mix)) = mix up to float32
    # rounding (≈ 140 dB with masks (P + eps/K)/(ΣP + eps)); the Separator's level gain
    # and its inverse are exact scalings at the priors' rate (16 kHz, mono: no resampling).
    assert _basis(mixtures[:1], checkpoints, tmp_path / "sep") == 0
    mix = sf.read(mixtures[0])[0]
    total = sum(sf.read(tmp_path / "sep" / "mono16k" / f"{s}.wav")[0] for s in ("piano", "violin"))
    assert 10 * np.log10(np.sum(mix**2) / np.sum((total - mix) ** 2)) > 100


def test_separate_started_from_the_bundled_nmf(mixtures, checkpoints, tmp_path):
    # --init nmf: the bundled NMF model (piano, violin, 16 kHz) starts the chains and the NNLS.
    assert _basis(mixtures[:1], checkpoints, tmp_path / "sep", "--init", "nmf") == 0
    assert _basis(mixtures[:1], checkpoints, tmp_path / "sep2", "--init-model", bundled("nmf")[0], "--threads", 1) == 0
    for name in ("sep", "sep2"):
        assert sf.info(tmp_path / name / "mono16k" / "violin.wav").frames == sf.info(mixtures[0]).frames
    same = [sf.read(tmp_path / name / "mono16k" / "piano.wav")[0] for name in ("sep", "sep2")]
    assert np.array_equal(*same)


def test_default_initialisation_is_the_mask_network_only_when_it_fits(mixtures, checkpoints, tmp_path):
    # piano/violin priors at 16 kHz: the bundled mask network fits, so the default is --init
    # model (its stems); --init nmf starts from the bundled NMF model; priors of other sources
    # (the same weights named a, b) start from the mixture.
    read = lambda folder, source: sf.read(tmp_path / folder / "mono16k" / f"{source}.wav")[0]  # noqa: E731
    for folder, extra in (("default", []), ("model", ["--init", "model"]), ("nmf", ["--init", "nmf"]),
                          ("nmf-file", ["--init", "model", "--init-model", bundled("nmf")[0]]),
                          ("mixture", ["--init", "mixture"])):
        assert _basis(mixtures[:1], checkpoints, tmp_path / folder, *extra) == 0
    assert np.array_equal(read("default", "piano"), read("model", "piano"))
    assert np.array_equal(read("nmf", "piano"), read("nmf-file", "piano"))
    assert not np.allclose(read("default", "piano"), read("nmf", "piano"))
    assert not np.allclose(read("default", "piano"), read("mixture", "piano"))
    renamed = {}
    for name, new in (("piano", "a"), ("violin", "b")):
        renamed[name] = tmp_path / f"{new}.pt"
        renamed[name].write_bytes(checkpoints[name].read_bytes())
    assert _basis(mixtures[:1], renamed, tmp_path / "ab") == 0
    assert np.array_equal(read("ab", "a"), read("mixture", "piano"))


def test_the_default_step_follows_the_likelihood():
    nmf = default_basis("nmf")
    assert (nmf.likelihood, nmf.delta, nmf.sigma_max, nmf.n_levels) == ("dirac", 1e-4, 0.05, 4)
    assert default_basis("nmf", likelihood="gaussian").delta == 2e-5  # 1e-4 diverges with the constraint
    assert default_basis("mixture").likelihood == "gaussian" and default_basis("mixture").delta == 2e-5
    assert default_basis("mixture", likelihood="dirac").delta == 1e-4
    assert default_basis("nmf", delta=3e-5).delta == 3e-5 and default_basis("nmf", delta=None).delta == 1e-4


def test_dirac_corrections_and_chains_reach_the_sampler(mixtures, checkpoints, tmp_path):
    # each option changes the stems; the Wiener stems still add up to the mixture
    read = lambda folder: sf.read(tmp_path / folder / "mono16k" / "piano.wav")[0]  # noqa: E731
    runs = {"base": [], "gaussian": ["--likelihood", "gaussian"], "corr": ["--corrections", "1"],
            "chains": ["--chains", "2"], "delta": ["--delta", "1e-5"]}  # base: from NMF, dirac
    for folder, extra in runs.items():
        assert _basis(mixtures[:1], checkpoints, tmp_path / folder, *extra) == 0
    for folder in ("gaussian", "corr", "chains", "delta"):
        assert not np.allclose(read("base"), read(folder)), folder
    mix = sf.read(mixtures[0])[0]
    total = sum(sf.read(tmp_path / "base" / "mono16k" / f"{s}.wav")[0] for s in ("piano", "violin"))
    assert 10 * np.log10(np.sum(mix**2) / np.sum((total - mix) ** 2)) > 100


def test_separate_with_priors_is_seeded(mixtures, checkpoints, tmp_path):
    runs = [("a", 3), ("b", 3), ("c", 4)]
    for name, seed in runs:
        assert _basis(mixtures[:1], checkpoints, tmp_path / name, "--seed", seed) == 0
    read = {name: sf.read(tmp_path / name / "mono16k" / "piano.wav")[0] for name, _ in runs}
    assert np.array_equal(read["a"], read["b"])
    assert not np.allclose(read["a"], read["c"])


@pytest.mark.parametrize("models, extra, message", [
    (["piano", "other"], [], "piano.pt and .*other.pt were trained on different mel front ends"),
    ([bundled("nmf")[0], "violin"], [], "is an NMF model but .*violin.pt is a prior"),
    (["piano"], [], "BASIS needs one prior per source"),
    (["piano", "violin"], ["--method", "nmf"], "method 'nmf' was asked for"),
    ([bundled("nmf")[0]], ["--steps", "3"], "--steps: BASIS option"),
    (["piano", "violin"], ["--levels", "1"], "at least 2 noise levels"),
    ([bundled("nmf")[0]], ["--init", "nmf"], "--init: BASIS option"),
    ([bundled("nmf")[0]], ["--likelihood", "dirac", "--chains", "2"], "--likelihood, --chains: BASIS option"),
    ([bundled("nmf")[0]], ["--delta", "1e-4"], "--delta: BASIS option"),
    (["piano", "violin"], ["--delta", "0"], "--delta: invalid"),
    ([bundled("nmf")[0]], ["--patch-hop", "8"], "--patch-hop: BASIS option"),
    (["piano", "violin"], ["--patch-hop", "0"], "--patch-hop: invalid integer >= 1"),
    (["piano", "violin"], ["--patch-hop", "999"], "patch hop must be between 1 and 64 frames, got 999"),
    (["piano", "violin"], ["--corrections", "-1"], "--corrections: invalid integer >= 0"),
    (["piano", "violin"], ["--chains", "0"], "--chains: invalid integer >= 1"),
    (["piano", "violin"], ["--init", "uniform", "--init-model", bundled("nmf")[0]], "--init-model is the starting model of"),
    (["piano", "violin"], ["--init-model", "violin"], "BASIS starts from an NMF model or a mask network"),
])
def test_separate_errors_are_one_line_and_write_nothing(mixtures, checkpoints, tmp_path, capsys, models, extra,
                                                         message):
    paths = [checkpoints.get(m, m) for m in models]
    model_args = ["--model", *paths] if paths else []
    extra = [checkpoints.get(e, e) for e in extra]
    assert _run("separate", mixtures[0], "-o", tmp_path / "sep", *model_args, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("audiosep separate: error:") and "\n" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "sep").exists()


def test_method_nmf_is_the_bundled_nmf_model(tmp_path):
    # no --model: BASIS over the bundled priors by default (tests/test_cli.py); --method nmf
    # is the bundled NMF model, the same as naming its file
    example = Path(__file__).parents[1] / "examples" / "piano_violin.wav"
    assert all(path.is_file() for path in bundled("basis"))
    assert _run("separate", example, "-o", tmp_path / "a", "--method", "nmf") == 0
    assert _run("separate", example, "-o", tmp_path / "b", "--model", bundled("nmf")[0]) == 0
    for source in ("piano", "violin"):
        a, b = (sf.read(tmp_path / name / ("piano_violin_nmf" if name == "a" else "nmf_piano_violin") / "piano_violin" / f"{source}.wav")[0]
                for name in ("a", "b"))
        assert a.shape == sf.read(example)[0].shape and np.array_equal(a, b)


def test_separation_method_is_inferred_from_the_files(checkpoints):
    assert separation_method([]) == "masknet"
    assert separation_method([], "basis") == "basis" and separation_method([], "nmf") == "nmf"
    assert separation_method([bundled("nmf")[0]]) == "nmf"
    assert separation_method([checkpoints["piano"], checkpoints["violin"]], "basis") == "basis"


def test_bundled_priors_load_on_the_default_front_end_and_fit_the_bundled_nmf():
    # the default `audiosep separate` path: both priors on the `default` mel front end (a
    # checkpoint of another front end would fail here), and the bundled NMF model able to
    # start their chains (same sources, same order, same rate)
    domain = Domain.mel(get_frontend("default"))
    priors = [load_prior(path, expected_domain=domain) for path in bundled("basis")]
    assert [p.stem for p in bundled("basis")] == ["piano", "violin"]
    assert all(prior.kind == "ncsn_v2" and prior.domain == domain for prior in priors)
    method = MelBasis.from_files(bundled("basis"))
    assert method.frontend.to_dict() == get_frontend("default").to_dict()
    assert baseline_mismatch(NMFModel.load(bundled("nmf")[0]), method.sources, method.sample_rate) is None
    assert baseline_mismatch(load_masknet(bundled("masknet")[0]), method.sources, method.sample_rate) is None
