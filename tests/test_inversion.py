"""Inversion: NNLS against scipy and librosa, Griffin-Lim against librosa, Wiener filters
against their closed forms, and the wav → mel → wav round trip."""
import librosa
import numpy as np
import pytest
import scipy.optimize
import torch

from audiosep.spectral import functional as F
from audiosep.spectral.frontend import get_frontend
from audiosep.spectral.inversion import (
    griffin_lim,
    invert_mel_powers,
    mel_to_stft_magnitude,
    mixture_phase,
    multichannel_wiener,
    nnls,
    wiener,
)
from audiosep.spectral.stft import STFTSettings

SR = 16000


def _harmonic(seconds=0.5, f0=220.0, n_harm=19, sr=SR):
    """Decaying harmonic tone, float64 (samples,), peak ≈ 0.5."""
    t = np.arange(int(sr * seconds)) / sr
    y = sum(np.sin(2 * np.pi * f0 * h * t + h) * np.exp(-2 * t) / h for h in range(1, n_harm + 1) if f0 * h < sr / 2)
    return 0.5 * y / np.abs(y).max()


def _spectral_convergence(ref_mag, est_mag):
    """‖|S| − |Ŝ|‖_F / ‖|S|‖_F."""
    return float(torch.linalg.norm(ref_mag - est_mag) / torch.linalg.norm(ref_mag))


def _sdr(ref, est):
    return float(10 * torch.log10(ref.square().sum() / (ref - est).square().sum()))


def test_nnls_matches_scipy_on_overdetermined_problems():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((30, 12)) + 0.5
    B = rng.standard_normal((2, 30, 4))  # many columns need active constraints
    ours = nnls(torch.tensor(A), torch.tensor(B), n_iter=300).numpy()
    assert ours.shape == (2, 12, 4) and ours.min() >= 0
    ref = np.stack([np.stack([scipy.optimize.nnls(A, b[:, j])[0] for j in range(4)], axis=1) for b in B])
    assert (ref == 0).any()
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_mel_to_stft_against_librosa():
    """The mel → STFT problem is underdetermined (n_mels < F), so NNLS solutions differ in
    the filterbank's null space; what must hold is that ours reproduces the mel powers at
    least as well as librosa's L-BFGS-B solution and is at least as close to the true |S|."""
    y = _harmonic(seconds=0.4)
    kw = dict(sr=SR, n_fft=1024, fmin=60.0, fmax=7000.0)
    S = np.abs(librosa.stft(y, n_fft=1024, hop_length=256, pad_mode="reflect"))
    M = librosa.feature.melspectrogram(S=S**2, n_mels=64, **kw)
    ref = librosa.feature.inverse.mel_to_stft(M, power=2.0, **kw)
    fb = F.mel_filterbank(SR, 1024, 64, 60.0, 7000.0, dtype=torch.float64)
    ours = mel_to_stft_magnitude(torch.tensor(M), fb, power=2.0).numpy()
    assert ours.shape == S.shape and ours.min() >= 0
    fb = fb.numpy()
    mel_err = lambda X: np.linalg.norm(fb @ X**2 - M) / np.linalg.norm(M)  # noqa: E731
    mag_err = lambda X: np.linalg.norm(X - S) / np.linalg.norm(S)  # noqa: E731
    assert mel_err(ours) <= 1e-2 and mel_err(ours) <= mel_err(ref)
    assert mag_err(ours) <= 1.05 * mag_err(ref)
    # power = 1: the magnitude mel spectrogram is inverted without a root
    ours1 = mel_to_stft_magnitude(torch.tensor(fb @ S), torch.tensor(fb), power=1.0).numpy()
    assert np.linalg.norm(fb @ ours1 - fb @ S) / np.linalg.norm(fb @ S) <= 1e-2


def test_nnls_started_from_a_solution_keeps_it():
    # Underdetermined (mel → STFT): many X ≥ 0 solve A X = B exactly. From the pseudo-inverse
    # start NNLS finds one of them; started from a solution X0, the gradient A^T(A X0 − B) is
    # zero, so it stays at X0 — the reference's detail within a band survives.
    fb = F.mel_filterbank(SR, 512, 24, 0.0, SR / 2, dtype=torch.float64)  # (24, 257)
    X0 = torch.tensor(np.random.default_rng(1).random((2, 257, 5)))
    B = fb @ X0
    default = nnls(fb, B, n_iter=300)
    started = nnls(fb, B, n_iter=300, init=X0)
    torch.testing.assert_close(started, X0, atol=1e-12, rtol=0)
    assert torch.linalg.norm(fb @ default - B) / torch.linalg.norm(B) < 1e-2
    assert torch.linalg.norm(default - X0) / torch.linalg.norm(X0) > 0.1  # another solution
    # a guess that does not solve it: the result fits B as well as from the default start
    guess = X0 * torch.tensor(np.random.default_rng(2).uniform(0.5, 1.5, X0.shape))
    fitted = nnls(fb, B, n_iter=300, init=guess)
    assert torch.linalg.norm(fb @ fitted - B) / torch.linalg.norm(B) < 1e-2
    assert torch.linalg.norm(fitted - X0) < torch.linalg.norm(default - X0)
    with pytest.raises(ValueError, match="init must have shape"):
        nnls(fb, B, init=X0[:1])


def test_invert_mel_powers_from_the_true_powers_is_the_stft_wiener_oracle():
    # True mel powers + the true STFT powers as reference → the NNLS stays at the true powers,
    # so the stems are exactly the Wiener (IRM2) oracle on the front end's STFT.
    fe = get_frontend("default")
    a = torch.tensor(_harmonic(seconds=0.5, f0=220.0), dtype=torch.float32)
    b = torch.tensor(_harmonic(seconds=0.5, f0=1330.0), dtype=torch.float32).roll(1000)
    sources, mix = torch.stack([a, b]), (a + b)[None]
    powers = fe.stft(sources).abs().square()  # (2, F, T)
    stems = invert_mel_powers(fe, fe.mel_power(sources), mix, reference=powers)
    oracle = fe.istft(wiener(powers[:, None], fe.stft(mix)), length=a.numel())
    torch.testing.assert_close(stems, oracle, atol=2e-5, rtol=0)
    plain = invert_mel_powers(fe, fe.mel_power(sources), mix)
    assert min(_sdr(s, e[0]) for s, e in zip(sources, stems)) > min(_sdr(s, e[0]) for s, e in zip(sources, plain))


@pytest.mark.parametrize("momentum", [0.0, 0.99])
def test_griffin_lim_equals_librosa_with_the_same_start(momentum):
    y = _harmonic()
    S = np.abs(librosa.stft(y, n_fft=512, hop_length=128, pad_mode="reflect"))
    ref = librosa.griffinlim(S, n_iter=16, hop_length=128, n_fft=512, init=None, momentum=momentum,
                             pad_mode="reflect", length=y.size)
    ours = griffin_lim(torch.tensor(S), STFTSettings(512, 128, pad_mode="reflect"), n_iter=16, momentum=momentum,
                       length=y.size, init="zeros")
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-9)


def test_griffin_lim_converges_and_fast_beats_plain():
    y = torch.tensor(_harmonic())
    S = F.stft(y, 512, 128).abs()

    def convergence(n_iter, momentum):
        x = griffin_lim(S, STFTSettings(512, 128, pad_mode="reflect"), n_iter=n_iter, momentum=momentum,
                        length=y.numel(), seed=3)
        return _spectral_convergence(S, F.stft(x, 512, 128).abs())

    plain = [convergence(n, 0.0) for n in (1, 4, 16, 32)]
    assert all(a > b for a, b in zip(plain, plain[1:])), plain
    assert convergence(32, 0.99) <= plain[-1]
    # measured with librosa.griffinlim (its own random start) on this signal: ≈ 0.22 plain, ≈ 0.12 fast
    assert plain[-1] < 0.3 and convergence(32, 0.99) < 0.2


def test_griffin_lim_seed_batch_and_phase_init():
    S = F.stft(torch.tensor(_harmonic(seconds=0.2)), 256, 64).abs()
    batch = torch.stack([S, 0.5 * S])
    settings = STFTSettings(256, 64, pad_mode="reflect")
    a = griffin_lim(batch, settings, n_iter=4, seed=7)
    torch.testing.assert_close(a, griffin_lim(batch, settings, n_iter=4, seed=7), rtol=0, atol=0)
    assert a.shape == (2, (S.shape[-1] - 1) * 64)
    true_phase = F.stft(torch.tensor(_harmonic(seconds=0.2)), 256, 64)
    exact = griffin_lim(S, settings, n_iter=0, init=true_phase.angle(), length=3200)
    torch.testing.assert_close(exact, torch.tensor(_harmonic(seconds=0.2)), atol=1e-10, rtol=0)


def test_mixture_phase(device):
    X = F.stft(torch.tensor(_harmonic(seconds=0.2), device=device), 256, 64)
    out = mixture_phase(torch.stack([X.abs(), 2 * X.abs()]), X)
    torch.testing.assert_close(out[0], X)
    torch.testing.assert_close(out[1], 2 * X)


def test_wiener_sums_to_mixture_and_matches_closed_form(device):
    gen = torch.Generator().manual_seed(0)
    power = (torch.rand(3, 2, 33, 20, generator=gen, dtype=torch.float64) + 1e-3).to(device)
    X = torch.randn(2, 33, 20, generator=gen, dtype=torch.complex128).to(device)
    est = wiener(power, X)
    assert est.shape == (3, 2, 33, 20)
    torch.testing.assert_close(est.sum(dim=0), X, rtol=1e-6, atol=0)
    torch.testing.assert_close(est[1], power[1] / power.sum(0) * X, rtol=1e-6, atol=0)


def test_multichannel_wiener_reduces_to_single_channel():
    gen = torch.Generator().manual_seed(1)
    power = torch.rand(2, 17, 9, generator=gen, dtype=torch.float64) + 1e-2
    X = torch.randn(1, 17, 9, generator=gen, dtype=torch.complex128)
    one = multichannel_wiener(power, torch.ones(2, 17, 1, 1, dtype=torch.float64), X)
    torch.testing.assert_close(one[:, 0], wiener(power, X[0]), rtol=1e-9, atol=1e-12)
    # identity spatial covariances on two channels: the single-channel filter on each channel
    X2 = torch.randn(2, 17, 9, generator=gen, dtype=torch.complex128)
    eye = torch.eye(2, dtype=torch.float64).expand(2, 17, 2, 2)
    torch.testing.assert_close(multichannel_wiener(power, eye, X2), wiener(power[:, None], X2), rtol=1e-9, atol=1e-12)


def test_multichannel_wiener_images_sum_to_mixture_and_recover_spatial_sources():
    """Two sources at opposite pans, each rank-1: images add up to x, and a source with all
    the power in a bin takes all of it."""
    gen = torch.Generator().manual_seed(2)
    steer = torch.tensor([[1.0, 0.2], [0.3, 1.0]], dtype=torch.complex128)
    cov = torch.einsum("kc,kd->kcd", steer, steer.conj())[:, None].expand(2, 5, 2, 2) + 1e-3 * torch.eye(2)
    power = torch.rand(2, 5, 7, generator=gen, dtype=torch.float64)
    power[1, :, 0] = 0.0
    X = torch.randn(2, 5, 7, generator=gen, dtype=torch.complex128)
    est = multichannel_wiener(power, cov, X)
    assert est.shape == (2, 2, 5, 7)
    # exact up to the eps·I loading of C_x (relative 1e-10 / its smallest eigenvalue)
    torch.testing.assert_close(est.sum(dim=0), X, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(est[0, :, :, 0], X[:, :, 0], rtol=1e-5, atol=1e-6)
    # a source with no power gets only its eps/K share of the loading
    torch.testing.assert_close(est[1, :, :, 0], torch.zeros_like(X[:, :, 0]), rtol=0, atol=1e-6)


def test_round_trip_wav_mel_wav_spectral_convergence():
    """Default front end, 1 s harmonic tone, mel → NNLS → 32 fast Griffin-Lim iterations.
    Measured: Griffin-Lim ≈ 0.21, mixture phase ≈ 0.09 (Griffin-Lim's own best on the true
    |S| is ≈ 0.1 at 32 iterations, so most of the loss is phase retrieval)."""
    fe = get_frontend("default")
    y = torch.tensor(_harmonic(seconds=1.0), dtype=torch.float32)
    S = fe.stft(y).abs()
    mel = fe.mel_power(y)[None]
    gl = invert_mel_powers(fe, mel, y[None], "griffinlim")
    assert gl.shape == (1, 1, y.numel())
    assert _spectral_convergence(S, fe.stft(gl[0, 0]).abs()) <= 0.25
    ph = invert_mel_powers(fe, mel, y[None], "phase")
    assert _spectral_convergence(S, fe.stft(ph[0, 0]).abs()) <= 0.1


def test_invert_mel_powers_wiener_separates_disjoint_sources():
    """A low harmonic tone and a high one: the mel oracle with Wiener masks recovers each
    (SDR > 20 dB), and the estimates add up to the mixture."""
    fe = get_frontend("default")
    low = torch.tensor(_harmonic(seconds=1.0, f0=110.0, n_harm=4), dtype=torch.float32)
    high = torch.tensor(_harmonic(seconds=1.0, f0=2500.0, n_harm=2), dtype=torch.float32)
    sources = torch.stack([low, high])
    mix = torch.stack([sources.sum(0), 0.5 * sources.sum(0)])  # 2 channels
    est = invert_mel_powers(fe, fe.mel_power(sources), mix, "wiener")
    assert est.shape == (2, 2, low.numel())
    assert _sdr(low, est[0, 0]) > 20 and _sdr(high, est[1, 0]) > 20
    torch.testing.assert_close(est[:, 1], 0.5 * est[:, 0], rtol=1e-5, atol=1e-6)
    assert _sdr(mix, est.sum(0)) > 40


def test_invert_mel_powers_multichannel_wiener_uses_each_sources_image():
    """Two overlapping tones (220 and 233 Hz) panned to opposite sides. Single-channel masks
    are the same on both channels; the multichannel filter, with spatial covariances from
    those masked images (one pass, no EM), moves each source towards its own side: on
    average over sources and channels it scores at least as well. Both sum to the mixture,
    and on mono input the multichannel filter is the single-channel one."""
    fe = get_frontend("default")
    a = torch.tensor(_harmonic(seconds=1.0, f0=220.0, n_harm=4), dtype=torch.float32)
    b = torch.tensor(_harmonic(seconds=1.0, f0=233.0, n_harm=4), dtype=torch.float32)
    images = torch.stack([torch.stack([a, 0.1 * a]), torch.stack([0.1 * b, b])])  # (K, C, N)
    mel, mix = fe.mel_power(images.mean(dim=1)), images.sum(dim=0)
    est = {m: invert_mel_powers(fe, mel, mix, m) for m in ("wiener", "wiener-mc")}
    mean_sdr = {m: np.mean([float(_sdr(images[k, c], e[k, c])) for k in range(2) for c in range(2)])
                for m, e in est.items()}
    assert est["wiener-mc"].shape == images.shape and mean_sdr["wiener-mc"] >= mean_sdr["wiener"]
    assert _sdr(mix, est["wiener-mc"].sum(dim=0)) > 40
    mono = mix.sum(dim=0, keepdim=True)
    torch.testing.assert_close(invert_mel_powers(fe, mel, mono, "wiener-mc"),
                               invert_mel_powers(fe, mel, mono, "wiener"), rtol=0, atol=1e-4)  # float64 vs float32


def test_invert_mel_powers_shapes_dtypes_and_errors():
    fe = get_frontend("audiosourcesep")
    mix = torch.tensor(np.stack([_harmonic(), 0.3 * _harmonic()]))  # float64, 2 channels
    mel = fe.mel_power(torch.stack([mix[0], mix[1]]))
    for method, extra in [("wiener", {}), ("phase", {}), ("phase", {"phase_from": "mono"}),
                          ("griffinlim", {"gl_iter": 2}), ("griffinlim", {"gl_iter": 2, "gl_init": "mixture"})]:
        out = invert_mel_powers(fe, mel, mix, method, nnls_iter=20, **extra)
        assert out.shape == (2, 2, mix.shape[1]) and out.dtype == torch.float64, method
    mono = invert_mel_powers(fe, mel, mix, "phase", nnls_iter=20, phase_from="mono")
    torch.testing.assert_close(mono[:, 0], mono[:, 1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="frames"):
        invert_mel_powers(fe, mel[..., :-1], mix)
    with pytest.raises(ValueError, match="wiener"):
        invert_mel_powers(fe, mel, mix, "nmf")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    fe = get_frontend("default")
    sources = torch.tensor(np.stack([_harmonic(f0=110.0), _harmonic(f0=660.0)]), dtype=torch.float32)
    mix = sources.sum(0, keepdim=True)
    cpu = invert_mel_powers(fe, fe.mel_power(sources), mix, "wiener")
    gpu = invert_mel_powers(fe, fe.mel_power(sources.cuda()), mix.cuda(), "wiener")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-5)
    S = fe.stft(mix[0]).abs()
    gl_cpu = griffin_lim(S, fe.stft_settings, n_iter=8, seed=0)
    gl_gpu = griffin_lim(S.cuda(), fe.stft_settings, n_iter=8, seed=0)
    torch.testing.assert_close(gl_gpu.cpu(), gl_cpu, rtol=1e-3, atol=1e-4)


def test_wiener_shares_the_mixture_where_no_source_has_power(device):
    X = torch.randn(3, 8, dtype=torch.complex128, device=device)
    power = torch.zeros(2, 3, 8, dtype=torch.float64, device=device)
    power[0, 0] = 1.0  # only source 0 has power, and only in bin 0
    est = wiener(power, X)
    torch.testing.assert_close(est.sum(dim=0), X, rtol=1e-12, atol=0)
    torch.testing.assert_close(est[0, 0], X[0], rtol=1e-9, atol=0)
    torch.testing.assert_close(est[:, 1:], (X[1:] / 2).expand(2, 2, 8), rtol=1e-12, atol=0)
    images = multichannel_wiener(power, torch.ones(2, 3, 1, 1, dtype=torch.float64, device=device), X[None])
    torch.testing.assert_close(images[:, 0], est, rtol=1e-9, atol=1e-15)
