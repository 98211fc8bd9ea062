"""BSSEval v4 (images mode, time-invariant distortion filters) matching ``museval.evaluate``.

The metrics follow museval 0.4.1 (``museval.evaluate(refs, ests, win, hop, mode="v4")``):

1. Estimates are zero-padded or cut to the length of the references.
2. One set of 512-tap multichannel distortion filters is fitted per track by least squares:
   the Gram matrix of delayed reference channels, ``G[(a, k), (b, l)] = r_ab(k - l)``, and the
   correlations of delayed reference channels with every estimate channel, ``D[(a, k), c]``,
   come from cross-correlations ``r_ab(m) = Σ_n x_a[n] x_b[n + m]``, ``|m| < 512``.
   ``C = (G + eps·I)⁻¹ D`` projects an estimate on all references, ``Cⱼ`` (the same system
   restricted to reference ``j``) on its own reference only.
3. In every window ``[t·hop, t·hop + win)`` the *windowed* references (zero outside the
   window) are filtered, giving ``P_own`` and ``P_all`` of length ``win + 511``, and
   ``SDR = ‖s‖² / ‖ŝ − s‖²``, ``ISR = ‖s‖² / ‖P_own − s‖²``, ``SIR = ‖P_own‖² / ‖P_all − P_own‖²``,
   ``SAR = ‖P_all‖² / ‖ŝ − P_all‖²`` (dB; a zero denominator gives +inf).
4. A window where any reference or any estimate is silent (its channel sum is zero at every
   sample) is NaN for every source and metric.

What differs from museval is only how the numbers are computed: the correlations are
accumulated blockwise in the frequency domain (all pairs at once); the block-Toeplitz Gram
system is solved once for all estimates by a block Levinson recursion with one step of
iterative refinement (a dense Cholesky solve takes over for near-singular systems); the
windowed filtering is done by batched FFTs over fixed-size pieces, and the energies are summed
per window, so working memory does not grow with the track.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import scipy.linalg

from audiosep.errors import UserError

FILTERS_LEN = 512
_CORR_NFFT = 2**14  # FFT size of the correlation blocks
_PIECE = 2**16  # longest stretch of a window filtered by one FFT (samples)
_BUFFER_BYTES = 8 * 2**20  # size of one float64 buffer of the windowed stage
_CORR_BYTES = 16 * 2**20  # spectra of the correlation blocks processed together
_SILENCE_CHUNK = 2**18  # samples per chunk when checking whole-signal silence
_EPS = np.finfo(float).eps  # museval's diagonal loading of the Gram matrix


def bss_eval_v4(
    references: np.ndarray,
    estimates: np.ndarray,
    win: int = 44100,
    hop: int = 44100,
    filters_len: int = FILTERS_LEN,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Framewise SDR, ISR, SIR, SAR as ``museval.evaluate(references, estimates, win, hop)``.

    Args:
        references: true source images, (nsrc, nsampl, nchan), any real dtype.
        estimates: estimated source images, (nsrc, nsampl_est, nchan); zero-padded or cut
            to ``nsampl`` like museval.
        win: window length in samples (the whole signal if ``win >= nsampl``).
        hop: hop between window starts in samples.
        filters_len: number of taps of the distortion filters (museval: 512).

    Returns:
        ``(sdr, isr, sir, sar)``, each float64 (nsrc, nwin) in dB, with
        ``nwin = (nsampl - win) // hop + 1`` (1 if ``win >= nsampl``). Windows where a
        reference or an estimate is silent are NaN.

    Raises:
        UserError: wrong shapes, non-finite samples, bad ``win``/``hop``, or a reference or
            estimate that is silent over the whole signal (museval raises there too).
    """
    refs, ests = _validate(references, estimates, win, hop, filters_len)
    nsrc, nsampl, nchan = refs.shape
    r_rr, r_re = _cross_correlations(refs, ests, filters_len)
    filt_all, filt_own = _distortion_filters(r_rr, r_re, nsrc, nchan, filters_len)
    sums, active = _window_energies(refs, ests, filt_all, filt_own, win, hop)
    return _ratios(sums, active)


# --------------------------------------------------------------------------- validation


def _validate(references, estimates, win, hop, filters_len) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, window parameters and silence; return the arrays (not copied)."""
    refs, ests = np.asarray(references), np.asarray(estimates)
    for name, x in (("references", refs), ("estimates", ests)):
        if x.ndim != 3 or 0 in x.shape:
            raise UserError(f"{name} must be a non-empty array (nsrc, nsampl, nchan); got shape {x.shape}")
    if refs.shape[0] != ests.shape[0] or refs.shape[2] != ests.shape[2]:
        raise UserError(
            f"references {refs.shape} and estimates {ests.shape} differ in sources or channels "
            "(both must be (nsrc, nsampl, nchan))"
        )
    for name, value in (("win", win), ("hop", hop), ("filters_len", filters_len)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name} must be a positive number of samples; got {value!r}")
    nsampl = refs.shape[1]
    for name, x in (("reference", refs), ("estimate", ests)):
        for j in _silent_sources(x, nsampl, name):
            raise UserError(
                f"{name} source {j} is silent over the whole signal; BSSEval is undefined for it "
                "(museval raises here too)"
            )
    return refs, ests


def _silent_sources(x: np.ndarray, nsampl: int, name: str) -> list[int]:
    """Indices of sources of ``x`` (nsrc, n, nchan) whose channel sum is zero on ``[0, nsampl)``.

    Also rejects NaN/inf samples (they would poison the least-squares fit silently).
    """
    active = np.zeros(x.shape[0], dtype=bool)
    for start in range(0, min(nsampl, x.shape[1]), _SILENCE_CHUNK):
        chunk = x[:, start : min(start + _SILENCE_CHUNK, nsampl)]
        channel_sum = chunk[:, :, 0].astype(np.float64)
        for c in range(1, x.shape[2]):
            channel_sum += chunk[:, :, c]
        if not np.isfinite(channel_sum).all():
            raise UserError(f"{name}s contain NaN or infinite samples")
        active |= (channel_sum != 0).any(axis=1)
    return [int(j) for j in np.flatnonzero(~active)]


def _gather(x: np.ndarray, start: int, stop: int, nsampl: int) -> np.ndarray:
    """Samples ``[start, stop)`` of ``x`` (nsrc, n, nchan) as float64 (nsrc, nchan, stop - start).

    Samples outside ``[0, min(n, nsampl))`` are zeros, which both pads the signal ends and
    zero-pads / cuts an estimate to the reference length ``nsampl``.
    """
    out = np.zeros((x.shape[0], x.shape[2], stop - start))
    lo, hi = max(start, 0), min(stop, nsampl, x.shape[1])
    if hi > lo:
        out[:, :, lo - start : hi - start] = x[:, lo:hi].transpose(0, 2, 1)
    return out


# ------------------------------------------------------------------- distortion filters


def _cross_correlations(
    refs: np.ndarray, ests: np.ndarray, filters_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-correlations of every reference channel with every reference / estimate channel.

    Channels are flattened source-major: ``a = j * nchan + c``. With
    ``r_ab(m) = Σ_n x_a[n] y_b[n + m]`` over the whole track (zeros outside it):

    Returns:
        r_rr: (P, P, 2·filters_len − 1), ``r_rr[a, b, m + filters_len − 1] = r_ab(m)`` between
            reference channels, ``P = nsrc·nchan``.
        r_re: (P, P, filters_len), ``r_re[a, b, k] = r_ab(k)``, ``k ≥ 0``, between reference
            channel ``a`` and estimate channel ``b``.

    Blocks of ``B`` reference samples are correlated with the ``B + 2·lag`` samples around them
    (``lag = filters_len − 1``) by FFTs of size ``nfft ≥ B + 2·lag``; the cross-spectra are
    summed over blocks and inverted once, so only ``2·lag + 1`` lags are ever formed.
    """
    nsrc, nsampl, nchan = refs.shape
    lag = filters_len - 1
    nfft = max(_CORR_NFFT, 1 << math.ceil(math.log2(8 * lag + 8)))
    block = nfft - 2 * lag
    nchannels = nsrc * nchan
    blocks_per_chunk = max(1, _CORR_BYTES // (3 * nchannels * nfft * 8))  # spectra of a block
    starts = list(range(0, nsampl, block))

    def channels(x: np.ndarray, start: int, stop: int) -> np.ndarray:  # (P, stop - start)
        return _gather(x, start, stop, nsampl).reshape(nchannels, stop - start)

    spectrum = np.zeros((nchannels, 2 * nchannels, nfft // 2 + 1), dtype=complex)
    for first in range(0, len(starts), blocks_per_chunk):
        chunk = starts[first : first + blocks_per_chunk]
        heads = np.stack([channels(refs, s, s + block) for s in chunk])
        around = np.stack([np.concatenate([channels(x, s - lag, s + block + lag) for x in (refs, ests)]) for s in chunk])
        head_f = scipy.fft.rfft(heads, n=nfft, axis=-1)
        np.conj(head_f, out=head_f)
        spectrum += np.einsum("bpf,bqf->pqf", head_f, scipy.fft.rfft(around, n=nfft, axis=-1))
    corr = scipy.fft.irfft(spectrum, n=nfft, axis=-1)[..., : 2 * lag + 1]
    return corr[:, :nchannels], corr[:, nchannels:, lag:]


def _distortion_filters(
    r_rr: np.ndarray, r_re: np.ndarray, nsrc: int, nchan: int, filters_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares distortion filters from the correlations of :func:`_cross_correlations`.

    The normal equations ``G C = D`` have ``G[(k, a), (l, b)] = r_ab(k − l)`` (delay-major
    ordering): a symmetric block-Toeplitz matrix with blocks ``R_m = r(m)`` (P × P),
    ``R_{−m} = R_mᵀ``, and ``D[(k, a), q] = r_aq(k)``.

    Returns:
        filt_all: (P_ref, filters_len, P_est): taps from reference channel ``a`` to estimate
            channel ``q`` when estimate ``q // nchan`` is projected on all references
            (museval's ``C``).
        filt_own: (nsrc, nchan, filters_len, nchan): taps from channel ``c_in`` of reference
            ``j`` to channel ``c_out`` when estimate ``j`` is projected on reference ``j`` only
            (museval's ``Cj``).
    """
    lag = filters_len - 1
    # symmetrise (r_ab(-m) = r_ba(m) up to rounding) and load the diagonal like museval
    blocks = 0.5 * (r_rr[:, :, lag:] + r_rr[:, :, lag::-1].transpose(1, 0, 2))
    blocks = np.ascontiguousarray(blocks.transpose(2, 0, 1))  # (L, P, P): R_m, m ≥ 0
    blocks[0][np.diag_indices(nsrc * nchan)] += _EPS
    rhs = r_re.transpose(2, 0, 1)  # (L, P_ref, P_est)
    filt_all = _solve_block_toeplitz(blocks, rhs).transpose(1, 0, 2)
    filt_own = np.empty((nsrc, nchan, filters_len, nchan))
    for j in range(nsrc):
        own = slice(j * nchan, (j + 1) * nchan)
        filt_own[j] = _solve_block_toeplitz(blocks[:, own, own], rhs[:, own, own]).transpose(1, 0, 2)
    return filt_all, filt_own


def _solve_block_toeplitz(blocks: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``T x = rhs`` for the symmetric block-Toeplitz ``T[k, l] = R_{k−l}``.

    Args:
        blocks: (L, P, P), ``blocks[m] = R_m`` for ``m ≥ 0`` (``R_{−m} = R_mᵀ``).
        rhs: (L, P, m).

    Returns:
        x: (L, P, m).

    Block Levinson recursion (O(L²P³) instead of O(L³P³)) plus one step of iterative
    refinement. If the recursion breaks down or the refinement still changes the projection
    energy ``xᵀ rhs`` by more than ``1e-12`` relative (a numerically near-singular system, e.g.
    identical channels), :func:`_solve_dense` takes over.
    """
    try:
        with np.errstate(all="ignore"):
            x = _block_levinson(blocks, rhs)
            residual = rhs - _block_toeplitz_matvec(blocks, x)
            step = _block_levinson(blocks, residual)
            x = x + step
            change = np.einsum("lpm,lpm->m", step, residual)
            energy = np.einsum("lpm,lpm->m", x, rhs)
        if np.all(np.isfinite(x)) and np.all(np.abs(change) <= 1e-12 * np.abs(energy)):
            return x
    except np.linalg.LinAlgError:
        pass
    return _solve_dense(blocks, rhs)


def _block_levinson(blocks: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Block Levinson recursion for ``T x = rhs`` (shapes as :func:`_solve_block_toeplitz`).

    Order n keeps the forward solution ``F`` (``T_n F = [I, 0, …]ᵀ``), the backward solution
    ``B`` (``T_n B = […, 0, I]ᵀ``) and the solution of the leading n block rows. ``B`` is stored
    at the end of its buffer so that ``[0; B]`` is a plain slice.
    """
    length, nch, _ = blocks.shape
    ncols = rhs.shape[2]
    rhs = rhs.reshape(length * nch, ncols)
    # block row n left of the diagonal ends [… R_2, R_1]; block row 0 right of it is [R_1ᵀ, R_2ᵀ, …]
    below = np.ascontiguousarray(blocks[:0:-1].transpose(1, 0, 2)).reshape(nch, (length - 1) * nch)
    above = np.ascontiguousarray(blocks[1:].transpose(2, 0, 1)).reshape(nch, (length - 1) * nch)
    fwd = np.zeros((length * nch, nch))
    bwd = np.zeros((length * nch, nch))
    x = np.zeros((length * nch, ncols))
    inv0 = np.linalg.inv(blocks[0])
    fwd[:nch], bwd[-nch:], x[:nch] = inv0, inv0, inv0 @ rhs[:nch]
    eye = np.eye(nch)
    for n in range(1, length):
        row = below[:, (length - 1 - n) * nch :]
        f, b = fwd[: (n + 1) * nch], bwd[(length - n - 1) * nch :]
        err_f = row @ fwd[: n * nch]
        err_b = above[:, : n * nch] @ bwd[(length - n) * nch :]
        new_f = (f - b @ err_f) @ np.linalg.inv(eye - err_b @ err_f)
        b[:] = (b - f @ err_b) @ np.linalg.inv(eye - err_f @ err_b)
        f[:] = new_f
        x[: (n + 1) * nch] += b @ (rhs[n * nch : (n + 1) * nch] - row @ x[: n * nch])
    return x.reshape(length, nch, ncols)


def _block_toeplitz_matvec(blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``T x`` by FFT convolution of the block sequence ``R_{−(L−1)} … R_{L−1}`` with x (L, P, m)."""
    length = blocks.shape[0]
    sequence = np.concatenate([blocks[:0:-1].transpose(0, 2, 1), blocks])
    nfft = scipy.fft.next_fast_len(3 * length - 2, real=True)
    seq_f = scipy.fft.rfft(sequence, n=nfft, axis=0)
    x_f = scipy.fft.rfft(x, n=nfft, axis=0)
    return scipy.fft.irfft(np.einsum("fab,fbm->fam", seq_f, x_f), n=nfft, axis=0)[length - 1 : 2 * length - 1]


def _solve_dense(blocks: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Dense fallback for near-singular systems: Cholesky of the Gram matrix (museval's
    ordering, with its ``eps`` loading); if it is not numerically positive definite (e.g.
    identical channels make it exactly singular), with the smallest extra ridge
    ``δ·max(diag)``, ``δ ∈ {1e-14, 1e-12, 1e-10, 1e-8}``, that is.
    """
    length, nch, ncols = rhs.shape
    flat = rhs.transpose(1, 0, 2).reshape(nch * length, ncols)
    scale = np.diagonal(blocks[0]).max()
    for ridge in (0.0, 1e-14, 1e-12, 1e-10, 1e-8):
        gram = _dense_toeplitz(blocks, ridge * scale)
        try:  # gram is symmetric: its transpose is the same matrix, in Fortran order (factored in place)
            factor = scipy.linalg.cho_factor(gram.T, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
        x = scipy.linalg.cho_solve(factor, flat, check_finite=False)
        return x.reshape(nch, length, ncols).transpose(1, 0, 2)
    raise np.linalg.LinAlgError("the Gram matrix of the references is not positive semi-definite")


def _dense_toeplitz(blocks: np.ndarray, ridge: float) -> np.ndarray:
    """The Gram matrix (P·L, P·L) in museval's ordering, ``G[a·L + k, b·L + l] = R_{k−l}[a, b]``,
    from blocks (L, P, P) (``R_{−m} = R_mᵀ``), plus ``ridge`` on the diagonal."""
    length, nch, _ = blocks.shape
    sequence = np.concatenate([blocks[:0:-1].transpose(0, 2, 1), blocks])  # R_{−(L−1)} … R_{L−1}
    delay = np.arange(length)[:, None] - np.arange(length)[None, :] + length - 1
    gram = np.empty((nch, length, nch, length))
    for a in range(nch):
        for b in range(nch):
            gram[a, :, b, :] = sequence[:, a, b][delay]
    gram = gram.reshape(nch * length, nch * length)
    gram[np.diag_indices_from(gram)] += ridge
    return gram


# -------------------------------------------------------------------- windowed energies

_SUMS = ("true", "sdr_den", "isr_den", "sir_num", "sir_den", "sar_num", "sar_den")


def _frames(nsampl: int, win: int, hop: int) -> tuple[np.ndarray, int]:
    """museval's framing: window starts (nwin,) and the common window length."""
    if win >= nsampl:
        return np.zeros(1, dtype=np.int64), nsampl
    nwin = (nsampl - win + hop) // hop
    return np.arange(nwin, dtype=np.int64) * hop, win


def _window_energies(
    refs: np.ndarray, ests: np.ndarray, filt_all: np.ndarray, filt_own: np.ndarray, win: int, hop: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Energy sums per window and source, and which windows have no silent source.

    Each window ``[a, a + length)`` is cut into pieces of at most ``_PIECE`` output samples;
    the last piece also covers the ``filters_len − 1`` samples of filter tail after the window.
    A piece's filtered output is computed by one FFT of its input stretch (the ``lag``
    preceding samples, zeroed at the window start), so the window behaves exactly as museval's
    zero-padded window. Windows are processed in batches sized to ``_BUFFER_BYTES``.

    Returns:
        sums: name → float64 (nsrc, nwin) for each of ``_SUMS``.
        active: bool (nwin,), True where every reference and estimate is non-silent.
    """
    nsrc, nsampl, nchan = refs.shape
    lag = filt_all.shape[1] - 1
    starts, length = _frames(nsampl, win, hop)
    sums = {name: np.zeros((nsrc, len(starts))) for name in _SUMS}
    active = np.zeros((len(starts), 2, nsrc), dtype=bool)
    offsets = range(0, length, _PIECE)
    batch = max(1, _BUFFER_BYTES // (nsrc * nchan * (min(length, _PIECE) + 2 * lag) * 8))
    spectra = {}  # nfft → filter spectra
    for first in range(0, len(starts), batch):
        idx = slice(first, first + batch)
        for offset in offsets:
            valid = min(_PIECE, length - offset)
            last = offset + valid == length
            nfft = scipy.fft.next_fast_len(valid + 2 * lag, real=True)
            if nfft not in spectra:
                spectra[nfft] = _filter_spectra(filt_all, filt_own, nfft)
            piece = _piece_energies(
                refs, ests, starts[idx] + offset, valid, offset == 0, last, spectra[nfft], lag
            )
            for name in _SUMS:
                sums[name][:, idx] += piece[name]
            active[idx] |= piece["active"]
    return sums, active.all(axis=(1, 2))


def _filter_spectra(filt_all: np.ndarray, filt_own: np.ndarray, nfft: int) -> tuple[np.ndarray, np.ndarray]:
    """rfft of the filters: all (P_ref, P_est, F) and own (nsrc, nchan_in, nchan_out, F)."""
    all_f = scipy.fft.rfft(filt_all.transpose(0, 2, 1), n=nfft, axis=-1)
    own_f = scipy.fft.rfft(filt_own.transpose(0, 1, 3, 2), n=nfft, axis=-1)
    return all_f, own_f


def _piece_energies(
    refs: np.ndarray,
    ests: np.ndarray,
    starts: np.ndarray,
    valid: int,
    first: bool,
    last: bool,
    spectra: tuple[np.ndarray, np.ndarray],
    lag: int,
) -> dict[str, np.ndarray]:
    """Energy sums of one piece of every window in a batch.

    Args:
        starts: (nbatch,) first sample of the piece in each window.
        valid: samples of the window in the piece; the output also spans ``lag`` tail samples
            when ``last``.
        first: the piece opens its window (the ``lag`` samples before it are not part of it).
        spectra: filter spectra for this piece's FFT size (see :func:`_filter_spectra`).

    Returns:
        each of ``_SUMS`` → (nsrc, nbatch), and "active" → bool (nbatch, 2, nsrc): references
        / estimates not silent in the piece.
    """
    nsrc, nsampl, nchan = refs.shape
    all_f, own_f = spectra
    nfft = 2 * (all_f.shape[-1] - 1)
    # (nbatch, nsrc, nchan, lag + valid): the piece and the lag samples before it
    inputs = np.stack([_gather(refs, s - lag, s + valid, nsampl) for s in starts])
    if first:
        inputs[..., :lag] = 0.0
    est = np.stack([_gather(ests, s, s + valid, nsampl) for s in starts])
    ref = inputs[..., lag:]
    inputs_f = scipy.fft.rfft(inputs, n=nfft, axis=-1)
    out = slice(lag, lag + valid + (lag if last else 0))
    own = scipy.fft.irfft(np.einsum("sicf,nsif->nscf", own_f, inputs_f), n=nfft, axis=-1)[..., out]
    if nsrc == 1:
        proj = own  # a single source has no interference: both projections are the same
    else:
        flat_f = inputs_f.reshape(len(starts), nsrc * nchan, -1)
        proj = scipy.fft.irfft(np.einsum("pqf,npf->nqf", all_f, flat_f), n=nfft, axis=-1)
        proj = proj.reshape(own.shape[:-1] + (nfft,))[..., out]
    body, tail = slice(0, valid), slice(valid, None)
    return {
        "true": _energy(ref),
        "sdr_den": _energy(est - ref),
        "isr_den": _energy(own[..., body] - ref) + _energy(own[..., tail]),
        "sir_num": _energy(own),
        "sir_den": _energy(proj - own),
        "sar_num": _energy(proj),
        "sar_den": _energy(est - proj[..., body]) + _energy(proj[..., tail]),
        "active": np.stack([(x.sum(axis=2) != 0).any(axis=-1) for x in (ref, est)], axis=1),
    }


def _energy(x: np.ndarray) -> np.ndarray:
    """Sum of squares over channels and time: (nbatch, nsrc, nchan, n) → (nsrc, nbatch)."""
    return np.einsum("nsct,nsct->sn", x, x)


def _ratios(sums: dict[str, np.ndarray], active: np.ndarray) -> tuple[np.ndarray, ...]:
    """(sdr, isr, sir, sar) in dB from the energy sums; +inf for a zero denominator, NaN
    in inactive windows."""

    def db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(den == 0, np.inf, 10 * np.log10(num / den))
        ratio[:, ~active] = np.nan
        return ratio

    return (
        db(sums["true"], sums["sdr_den"]),
        db(sums["true"], sums["isr_den"]),
        db(sums["sir_num"], sums["sir_den"]),
        db(sums["sar_num"], sums["sar_den"]),
    )
