"""Latent-domain separation (LQ-VAE + code priors) against its ceiling, NMF and the oracles.

    python benchmarks/latent.py --lqvae exp/drums_bass/lqvae.pt \\
        --priors exp/drums_bass/priors/drums.pt exp/drums_bass/priors/bass.pt \\
        --nmf exp/drums_bass/nmf_drums_bass.pt --data data/drums_bass --tracks 10 --seconds 4
    python benchmarks/latent.py --lqvae my_lqvae.pt --data data/drums_bass --tracks 10 --seconds 4

`--data data/drums_bass_unseen` scores the same excerpts rendered with a soundfont no model of
recipes/drums_bass/run.sh is trained on (TimGM6mb).

Without `--priors` only the codec is scored (the `lqvae-ceiling*` rows, its linearity, `nmf` and
the oracles): what an LQ-VAE can keep, measured before any code prior is trained on it. The
sources are then the ones the LQ-VAE was trained on (`--sources` to name others).

Every method gets the same excerpts (the first `--seconds` of the first `--tracks` tracks of
`DATA/<split>`) and is scored with BSSEval v4 (1 s windows). Rows (median over windows, then
tracks, of SDR / SIR / SAR per source):

- `latent-decoded`: `Separator(LatentSeparator)` with `postfilter="none"`: the decoded
  waveforms of the pair the method selects by the mixture alone (never the best of N against
  the references), the paper's output; the chains are resampled as a particle filter unless
  `--resample 0` (the paper's independent chains).
- `latent`: the same estimates' STFT powers as Wiener masks on the mixture
  (`spectral.inversion.wiener_from_waveforms`): the default `audiosep separate --method latent`
  (`--postfilter wiener`), from the same samples.
- `lqvae-ceiling`: each true source encoded and decoded by the LQ-VAE (top level): what the
  codec keeps, the ceiling of any separation in its code space.
- `lqvae-ceiling-wiener`: those decoded true sources as Wiener masks on the mixture: the
  ceiling of the post-filtered `latent` row (what perfect code sequences would score there).
- `nmf`: the supervised NMF model trained on the same stems (`--nmf`).
- `irm2`, `mix`: the IRM (α = 2) oracle and the mixture / 2.

Below it: wall and CPU seconds per second of audio of `latent-decoded` (the Wiener step adds
about 0.01) and `nmf` (torch on
`--threads`, default 1); the LQ-VAE's linearity on held-out pairs of test crops
(`vqvae.linearity`); and the speed of one token step of the pair posterior, batched
(`sample_pairs`, blocks of the marginal) against the per-chain reference loop
(`sample_pairs_reference`) at equal settings, checked to draw identical pairs, at the model's
codebook size and at the paper's (2048 codes, 64 chains), with the peak memory the batched
step allocates (tracemalloc does not see torch; the block bound is printed instead).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from audiosep.data.stems import list_tracks, load_track
from audiosep.errors import UserError, run_reporting_user_errors
from audiosep.eval.report import score_track, summarize
from audiosep.oracle import run_oracle
from audiosep.priors.vqvae import linearity, load_lqvae
from audiosep.separation.latent import LatentConfig, LatentSeparator, sample_pairs, sample_pairs_reference
from audiosep.separation.nmf import NMFModel
from audiosep.separation.separator import Separator
from audiosep.spectral.inversion import wiener_from_waveforms


def codec_ceiling(lqvae, refs: np.ndarray) -> np.ndarray:
    """The true sources `(2, 1, N)` (at the LQ-VAE's rate) encoded and decoded by the LQ-VAE's
    top level, `(2, 1, N)`."""
    n = refs.shape[-1]
    x = torch.nn.functional.pad(torch.from_numpy(refs[:, :1]).float(), (0, (-n) % lqvae.hop()))  # (2, 1, N')
    with torch.no_grad():
        return lqvae.decode(lqvae.encode(x))[..., :n].numpy()


def codec_sources(lqvae_path: Path, names: list[str] | None) -> list[str]:
    """The two source names of the codec-only run: `names`, else the LQ-VAE's training sources."""
    if names is None:
        from audiosep.priors.base import load_checkpoint

        stored = load_checkpoint(lqvae_path).get("extra", {}).get("data", {}).get("sources")
        names = stored.split(",") if stored else None
    if names is None or len(names) != 2:
        raise UserError(f"{lqvae_path}: name the two sources with --sources (the checkpoint names "
                        f"{'none' if names is None else len(names)})")
    return names


def token_step_speed(n_codes: int, n_chains: int, tokens: int, max_elements: int) -> dict[str, float]:
    """Seconds per token of the batched and the reference pair sampling, on random log-priors
    and likelihoods (after one untimed warm-up call of each), and whether their draws are
    identical."""
    g = torch.Generator().manual_seed(0)
    times = {"batched": 0.0, "reference": 0.0}
    same = True
    warm = torch.zeros(n_chains, n_codes), torch.zeros(n_chains, n_codes), torch.zeros(n_codes, n_codes)
    sample_pairs(*warm, torch.zeros(n_chains, 2, dtype=torch.float64), max_elements)
    sample_pairs_reference(*warm, torch.zeros(n_chains, 2, dtype=torch.float64))
    for _ in range(tokens):
        lp0 = torch.log_softmax(torch.randn(n_chains, n_codes, generator=g), -1)
        lp1 = torch.log_softmax(torch.randn(n_chains, n_codes, generator=g), -1)
        loglik = -torch.rand(n_codes, n_codes, generator=g) * 20
        uniforms = torch.rand(n_chains, 2, generator=g, dtype=torch.float64)
        start = time.perf_counter()
        a, b = sample_pairs(lp0, lp1, loglik, uniforms, max_elements)
        times["batched"] += time.perf_counter() - start
        start = time.perf_counter()
        ra, rb = sample_pairs_reference(lp0, lp1, loglik, uniforms)
        times["reference"] += time.perf_counter() - start
        same &= bool(torch.equal(a, ra) and torch.equal(b, rb))
    return {"codes": n_codes, "chains": n_chains, "batched s/token": times["batched"] / tokens,
            "reference s/token": times["reference"] / tokens,
            "speed-up": times["reference"] / times["batched"], "identical draws": same,
            "block MB": 4 * max_elements / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lqvae", type=Path, required=True)
    parser.add_argument("--priors", type=Path, nargs=2,
                        help="one code prior per source (without them: the codec alone)")
    parser.add_argument("--sources", nargs=2, help="without --priors: the two sources (default: the LQ-VAE's)")
    parser.add_argument("--nmf", type=Path, help="supervised NMF model trained on the same stems")
    parser.add_argument("--data", type=Path, default=Path("data/drums_bass"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--tracks", type=int, help="only the first N tracks")
    parser.add_argument("--seconds", type=float, help="only the first S seconds of each track")
    parser.add_argument("--chains", type=int, default=LatentConfig.n_chains)
    parser.add_argument("--sigma", type=float, default=LatentConfig.sigma)
    parser.add_argument("--likelihood", default=LatentConfig.likelihood)
    parser.add_argument("--window", type=int)
    parser.add_argument("--resample", type=float, default=LatentConfig.resample,
                        help="sequential Monte Carlo: resample below this effective sample size / chains")
    parser.add_argument("--seed", type=int, default=0, help="seed of the chains' draws")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--token-steps", type=int, default=10, help="tokens timed in the step comparison")
    parser.add_argument("-o", "--output", type=Path, help="also write the long table as CSV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)

    config = LatentConfig(n_chains=args.chains, sigma=args.sigma, likelihood=args.likelihood, window=args.window,
                          postfilter="none", resample=args.resample, seed=args.seed)
    if args.priors and args.sources:
        raise UserError("--sources is for the codec alone: with --priors the sources are named after their files")
    separators = {}
    if args.priors:
        method = LatentSeparator.from_files(args.lqvae, args.priors, config)
        method.progress = False
        lqvae, sources = method.lqvae, method.sources
        separators["latent-decoded"] = Separator(method, progress=False)
    else:
        lqvae, sources = load_lqvae(args.lqvae), codec_sources(args.lqvae, args.sources)
    sample_rate = int(lqvae.get_config()["sample_rate"])
    if args.nmf:
        separators["nmf"] = Separator(NMFModel.load(args.nmf), progress=False)
    tracks = list_tracks(args.data, args.split)[: args.tracks]
    tables, cpu, wall, audio = [], dict.fromkeys(separators, 0.0), dict.fromkeys(separators, 0.0), 0.0
    pairs = []
    for track in tqdm(tracks, desc="tracks", unit="track"):
        mix, stems, rate = load_track(track)
        if rate != sample_rate:
            raise SystemExit(f"{track.name}: {rate} Hz; the LQ-VAE is at {sample_rate} Hz")
        n = mix.shape[-1] if args.seconds is None else min(mix.shape[-1], int(args.seconds * rate))
        missing = [s for s in sources if s not in stems]
        if missing:
            raise UserError(f"{track.name}: no stem {missing[0]!r} (it has {', '.join(stems)})")
        refs = np.stack([stems[s][:, :n] for s in sources])
        mix = refs.sum(axis=0)
        audio += n / rate
        estimates = {}
        for name, separator in separators.items():
            c0, w0 = time.process_time(), time.perf_counter()
            estimates[name] = separator.separate(mix, rate)
            cpu[name] += time.process_time() - c0
            wall[name] += time.perf_counter() - w0
        if "latent-decoded" in estimates:
            estimates["latent"] = wiener_from_waveforms(torch.from_numpy(estimates["latent-decoded"]),
                                                        torch.from_numpy(mix)).numpy()
        estimates["lqvae-ceiling"] = codec_ceiling(lqvae, refs)
        estimates["lqvae-ceiling-wiener"] = wiener_from_waveforms(torch.from_numpy(estimates["lqvae-ceiling"]),
                                                                  torch.from_numpy(mix)).numpy()
        estimates["irm2"] = run_oracle("irm2", refs, rate)
        estimates["mix"] = run_oracle("mix", refs, rate)
        tables += [score_track(track.name, sources, refs, est, rate, 1.0, method=name)
                   for name, est in estimates.items()]
        pairs.append(torch.from_numpy(refs[:, 0]).float())
    table = pd.concat(tables, ignore_index=True)
    wide = summarize(table).pivot_table(index=["method", "target"], columns="metric", values="score")
    order = ["latent", "latent-decoded", "lqvae-ceiling", "lqvae-ceiling-wiener", "nmf", "irm2", "mix"]
    print(f"\nBSSEval v4 medians, {len(tracks)} tracks of {args.data}/{args.split}"
          + (f", first {args.seconds:g} s" if args.seconds else ""))
    print(wide.reindex([m for m in order if m in set(table["method"])], level="method")[["SDR", "SIR", "SAR"]]
          .round(2).to_string())
    if separators:
        print("\nseconds per second of audio (torch threads: %d)" % args.threads)
        print(pd.DataFrame({"CPU s/s": {k: v / audio for k, v in cpu.items()},
                            "wall s/s": {k: v / audio for k, v in wall.items()}}).round(3).to_string())

    hop = lqvae.hop()
    crops = torch.stack([p[:, : (p.shape[-1] // hop) * hop] for p in pairs])  # (tracks, 2, N)
    with torch.no_grad():
        report = linearity(lqvae, crops[:, :1], crops[:, 1:2])
    print("\nLQ-VAE linearity on the test pairs:", {k: round(float(v), 4) for k, v in report.items()})

    rows = [token_step_speed(lqvae.codebook().shape[0], args.chains, args.token_steps, config.max_elements),
            token_step_speed(2048, 64, 1, config.max_elements)]
    print("\none token step of the pair posterior (random inputs):")
    print(pd.DataFrame(rows).round(4).to_string(index=False))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.output, index=False)


if __name__ == "__main__":
    run_reporting_user_errors(main, "latent.py")
