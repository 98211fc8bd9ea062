"""Latent-domain separation: the pair posterior, its exact sampling in bounded memory, the
per-token reference, and the selection of chains by the mixture alone."""
import inspect
import math

import pytest
import torch

from audiosep.errors import UserError
from audiosep.separation.latent import (LatentConfig, LikelihoodCache, PairLikelihood, best_pair, common_prefix,
                                        effective_sample_size, likelihood_table, pair_marginal, pair_scores,
                                        sample_pairs, sample_pairs_reference, systematic_resample)
from audiosep.spectral.stft import STFTSettings


def _random_table(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n, n), generator=g)


def test_uniform_prior_with_dirac_likelihood_puts_all_mass_on_matching_pairs():
    n, chains = 12, 400
    table = _random_table(n)
    mix_code = int(table[3, 7])
    codebook = torch.randn(n, 4)
    loglik = likelihood_table(table, codebook, mix_code, sigma=0.4, likelihood="dirac")
    uniform = torch.full((chains, n), -math.log(n))
    a, b = sample_pairs(uniform, uniform, loglik, torch.rand(chains, 2, dtype=torch.float64))
    assert torch.all(table[a, b] == mix_code)
    # and every matching pair is reachable: the draws cover the allowed set uniformly enough
    allowed = (table == mix_code).nonzero().tolist()
    drawn = {tuple(p) for p in torch.stack([a, b], 1).tolist()}
    assert drawn <= {tuple(p) for p in allowed} and len(drawn) >= min(len(allowed), 2)


def test_gaussian_likelihood_is_the_codebook_distance_of_the_sum_code():
    n = 6
    table = _random_table(n, 1)
    codebook = torch.randn(n, 3)
    loglik = likelihood_table(table, codebook, 2, sigma=0.5)
    for a in range(n):
        for b in range(n):
            expected = -(codebook[table[a, b]] - codebook[2]).square().sum() / (2 * 0.25)
            assert loglik[a, b].item() == pytest.approx(expected.item(), rel=1e-6)


def test_blocked_marginal_equals_the_full_joint(device):
    n, chains = 9, 5
    lp0 = torch.log_softmax(torch.randn(chains, n), -1).to(device)
    lp1 = torch.log_softmax(torch.randn(chains, n), -1).to(device)
    loglik = (-torch.rand(n, n) * 3).to(device)
    full = torch.logsumexp(lp0.unsqueeze(2) + lp1.unsqueeze(1) + loglik, dim=2)
    for max_elements in (1, chains * n, 10 ** 6):
        torch.testing.assert_close(pair_marginal(lp0, lp1, loglik, max_elements), full)


def test_cached_likelihood_gives_the_marginal_of_its_table_bit_for_bit():
    n, chains = 16, 6
    g = torch.Generator().manual_seed(3)
    table, codebook = _random_table(n, 2), torch.randn(n, 3, generator=g)
    lp0 = torch.log_softmax(torch.randn(chains, n, generator=g), -1)
    lp1 = torch.log_softmax(torch.randn(chains, n, generator=g), -1)
    cache = LikelihoodCache(table, codebook, 0.4, "gaussian", max_elements=3 * 2 * n * n)
    for code in (5, 1, 5, 7, 9, 1):
        loglik = likelihood_table(table, codebook, code, 0.4)
        entry = cache(code)
        assert entry.factor is not None and torch.equal(entry.log, loglik)
        assert torch.equal(pair_marginal(lp0, lp1, entry), pair_marginal(lp0, lp1, loglik))
        assert len(cache._entries) <= 3  # the memory bound: 3 tables of 2·n² floats
    assert list(cache._entries) == [7, 9, 1]  # least recently used dropped first
    # a table past max_elements keeps no factor and is exponentiated block by block
    assert PairLikelihood.of(loglik, max_elements=n * n - 1).factor is None


def test_marginal_stays_exact_where_the_float32_product_underflows():
    # chain 0: every pair's weight lies 120–150 nats below its factors' maxima, so each float32
    # product term underflows; chain 1: ordinary ranges; chain 2: the codes a ≥ 3 underflow
    # yet hold the mass (the others' prior is 200 nats lower). All must match the float64 joint.
    n = 7
    g = torch.Generator().manual_seed(3)
    lp0 = torch.log_softmax(torch.randn(3, n, generator=g) * 3, -1)
    lp0[2, :3] = -200.0
    lp1 = torch.full((3, n), -150.0)
    lp1[0, 0] = lp1[2, 1] = 0.0
    lp1[1] = torch.log_softmax(torch.randn(n, generator=g), -1)
    loglik = -torch.rand(n, n, generator=g)
    loglik[:, 0] = -120.0 - torch.rand(n, generator=g)
    loglik[3:, 1] = -120.0
    full = torch.logsumexp(lp0.double().unsqueeze(2) + lp1.double().unsqueeze(1) + loglik.double(), dim=2)
    marginal = pair_marginal(lp0, lp1, loglik)
    assert torch.isfinite(marginal).all()
    torch.testing.assert_close(marginal.double(), full, rtol=0, atol=1e-4)
    uniforms = torch.rand(3, 2, generator=g, dtype=torch.float64)
    assert all(torch.equal(x, y) for x, y in zip(sample_pairs(lp0, lp1, loglik, uniforms),
                                                  sample_pairs_reference(lp0, lp1, loglik, uniforms)))


def test_batched_draws_equal_the_per_chain_reference_and_follow_the_joint():
    n, chains = 5, 20000
    g = torch.Generator().manual_seed(0)
    lp0 = torch.log_softmax(torch.randn(1, n, generator=g), -1).expand(chains, n)
    lp1 = torch.log_softmax(torch.randn(1, n, generator=g), -1).expand(chains, n)
    loglik = -torch.rand(n, n, generator=g) * 2
    uniforms = torch.rand(chains, 2, generator=g, dtype=torch.float64)
    a, b = sample_pairs(lp0, lp1, loglik, uniforms, max_elements=n * 7)
    ra, rb = sample_pairs_reference(lp0[:200], lp1[:200], loglik, uniforms[:200])
    assert torch.equal(a[:200], ra) and torch.equal(b[:200], rb)
    joint = torch.softmax((lp0[0].unsqueeze(1) + lp1[0].unsqueeze(0) + loglik).flatten(), 0)
    counts = torch.bincount(a * n + b, minlength=n * n).double() / chains
    assert (counts - joint.double()).abs().max() < 0.015


def test_an_empty_dirac_posterior_falls_back_to_the_priors():
    n = 4
    table = torch.zeros(n, n, dtype=torch.long)  # every pair sums to code 0
    loglik = likelihood_table(table, torch.randn(n, 2), 3, 0.4, "dirac")  # the mixture code is 3: no pair
    lp = torch.log_softmax(torch.randn(8, n), -1)
    a, b = sample_pairs(lp, lp, loglik, torch.rand(8, 2, dtype=torch.float64))
    assert a.shape == (8,) and b.shape == (8,) and int(a.max()) < n


def test_selection_scores_against_the_mixture_only():
    assert "reference" not in " ".join(inspect.signature(pair_scores).parameters)
    g = torch.Generator().manual_seed(1)
    length, chains = 256, 6
    x0, x1 = torch.randn(chains, length, generator=g), torch.randn(chains, length, generator=g)
    target = 0.5 * x0[4] + 0.5 * x1[2]
    prior = torch.full((chains,), -50.0)
    scores = pair_scores(x0, x1, target, prior, prior, (0.5, 0.5), n_tokens=10)
    assert scores.shape == (chains, chains) and best_pair(scores) == (4, 2)


def test_config_refuses_bad_values_in_one_line():
    for bad in ({"n_chains": 0}, {"sigma": 0.0}, {"likelihood": "laplace"}, {"window": 0},
                {"temperature": 0}, {"alpha": (0.3, 0.7)}, {"postfilter": "median"}):
        with pytest.raises(UserError) as err:
            LatentConfig(**bad)
        assert "\n" not in str(err.value)


# --- end to end: tiny LQ-VAE + two tiny code priors through the CLI ----------------------

RATE = 8000


@pytest.fixture(scope="module")
def latent_models(tmp_path_factory):
    """(LQ-VAE path, {source: prior path}, the codes of another LQ-VAE's prior, folder)."""
    from audiosep.priors import Domain, save_checkpoint
    from audiosep.priors.transformer import CodeTransformer
    from audiosep.priors.vqvae import LQVAE
    from audiosep.training.lqvae import finish_checkpoint

    root = tmp_path_factory.mktemp("latent")
    paths = {}
    for name, seed in (("lqvae", 0), ("other", 1)):
        torch.manual_seed(seed)
        model = LQVAE(sample_rate=RATE, hops=(16,), n_codes=16, code_dim=4, width=8, res_depth=1)
        model.train()
        model(torch.randn(2, 1, 4096) * 0.1)  # the codebook starts from these latents
        model.eval()
        paths[name] = save_checkpoint(root / f"{name}.pt", model, Domain.waveform(RATE))
        finish_checkpoint(paths[name], level_db=-20.0)
        paths[name + "_domain"] = model.code_domain()
    priors = {}
    for source in ("drums", "bass"):
        prior = CodeTransformer(16, context=16, width=16, layers=1, heads=2)
        priors[source] = save_checkpoint(root / f"{source}.pt", prior, paths["lqvae_domain"])
    foreign = save_checkpoint(root / "foreign" / "bass.pt", CodeTransformer(16, context=16, width=16, layers=1,
                                                                          heads=2), paths["other_domain"])
    return paths["lqvae"], priors, foreign, root


def _mixture(path, rate, seconds=0.5):
    import numpy as np
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 110 * t) + 0.05 * np.sign(np.sin(2 * np.pi * 4 * t))).astype("float32"),
             rate)
    return path


def test_latent_separation_through_the_cli_is_seeded_and_resamples(latent_models, tmp_path):
    import soundfile as sf

    from audiosep.cli import main

    lqvae, priors, _, _ = latent_models
    mix = _mixture(tmp_path / "mix.wav", 11025)  # another rate than the LQ-VAE's: resampled both ways
    for name in ("a", "b"):
        assert main(["separate", str(mix), "-o", str(tmp_path / name), "-n", "latent", "--method", "latent",
                     "--model", str(lqvae), str(priors["drums"]), str(priors["bass"]), "--chains", "4",
                     "--window", "6", "--seed", "3", "--postfilter", "wiener"]) == 0
    stems = {s: sf.read(tmp_path / "a" / "latent" / "mix" / f"{s}.wav")[0] for s in ("drums", "bass")}
    again = {s: sf.read(tmp_path / "b" / "latent" / "mix" / f"{s}.wav")[0] for s in ("drums", "bass")}
    assert stems["drums"].shape == (int(11025 * 0.5),)
    assert all((stems[s] == again[s]).all() for s in stems)


def test_latent_method_length_and_windows(latent_models):
    from audiosep.separation.latent import LatentSeparator

    lqvae, priors, _, _ = latent_models
    method = LatentSeparator.from_files(lqvae, [priors["drums"], priors["bass"]],
                                        LatentConfig(n_chains=3, window=5))
    method.progress = False
    mix = torch.randn(1, 16 * 37 + 5) * 0.1  # 38 codes: past the priors' context of 16, not a whole hop
    with torch.no_grad():
        stems = method(mix)
    assert stems.shape == (2, 1, mix.shape[-1]) and torch.isfinite(stems).all()


@pytest.mark.parametrize("models, message", [
    (lambda m: [m[0], m[1]["drums"], m[2]], "codes of LQ-VAE"),          # a prior of another LQ-VAE
    (lambda m: [m[0], m[1]["drums"]], "LQ-VAE first, then one code prior per source"),
    (lambda m: [m[1]["drums"], m[0], m[1]["bass"]], "LQ-VAE first"),
])
def test_latent_model_errors_are_one_line(latent_models, tmp_path, capsys, models, message):
    from audiosep.cli import main

    mix = _mixture(tmp_path / "mix.wav", RATE)
    argv = ["separate", str(mix), "-o", str(tmp_path / "out"), "--model", *map(str, models(latent_models))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "out").exists()


def test_basis_options_are_refused_for_latent_and_latent_options_for_basis(latent_models, tmp_path, capsys):
    from audiosep.cli import main

    lqvae, priors, _, _ = latent_models
    mix = _mixture(tmp_path / "mix.wav", RATE)
    base = ["separate", str(mix), "-o", str(tmp_path / "out")]
    latent = ["--model", str(lqvae), str(priors["drums"]), str(priors["bass"])]
    assert main(base + latent + ["--levels", "3"]) == 2
    assert "--levels" in capsys.readouterr().err
    assert main(base + ["--method", "nmf", "--sigma", "0.3"]) == 2
    assert "--sigma" in capsys.readouterr().err
    assert main(base + ["--method", "latent"]) == 2
    assert "has no latent model" in capsys.readouterr().err


def test_wiener_postfilter_sums_to_the_mixture_and_keeps_exact_estimates():
    from audiosep.spectral.inversion import wiener_from_waveforms

    g = torch.Generator().manual_seed(0)
    t = torch.arange(8000) / 8000
    sources = torch.stack([torch.sin(2 * math.pi * 220 * t), 0.5 * torch.randn(8000, generator=g)]).unsqueeze(1)
    mix = sources.sum(0)
    noisy = sources + 0.05 * torch.randn(sources.shape, generator=g)
    out = wiener_from_waveforms(noisy, mix, STFTSettings(512, 128))
    assert out.shape == sources.shape
    torch.testing.assert_close(out.sum(0), mix, atol=1e-4, rtol=0)
    # the masks come from the estimates' powers: the tone stays the tone
    err = (out - sources).square().sum(-1) / sources.square().sum(-1)
    assert err.max() < 0.05


def test_common_prefix_counts_the_columns_every_chain_shares():
    codes = torch.tensor([[4, 2, 7, 1], [4, 2, 5, 1], [4, 2, 7, 0]])
    assert common_prefix(codes) == 2
    assert common_prefix(codes[:1]) == 4 and common_prefix(codes[:, :0]) == 0
    assert common_prefix(codes[:, 2:]) == 0


def test_effective_sample_size_and_systematic_resampling():
    n = 10
    assert effective_sample_size(torch.zeros(n)) == pytest.approx(n)
    one_hot = torch.full((n,), -math.inf)
    one_hot[3] = 0.0
    assert effective_sample_size(one_hot) == pytest.approx(1.0)
    assert effective_sample_size(torch.full((n,), -math.inf)) == 0.0
    assert systematic_resample(torch.zeros(n), 0.5).tolist() == list(range(n))
    assert systematic_resample(one_hot, 0.99).tolist() == [3] * n
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        log_w = torch.randn(n, generator=g) * 2
        log_w[int(torch.randint(0, n, (), generator=g))] = -math.inf  # a chain of no evidence is dropped
        kept = systematic_resample(log_w, float(torch.rand((), generator=g)))
        counts = torch.bincount(kept, minlength=n).double()
        expected = torch.softmax(log_w.double(), 0) * n
        assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()


def test_resampled_chains_keep_their_caches_histories_and_priors_together(latent_models, monkeypatch):
    """After a resampling that makes every chain a copy of chain 0, each chain's summed
    log-prior is still the prior's log-probability of its own drawn codes (caches, histories
    and sums moved together), and all chains share the codes drawn before it."""
    import audiosep.separation.latent as latent
    from audiosep.separation.latent import LatentSeparator

    calls = []

    def all_from_chain_0(log_weights, uniform):
        calls.append(len(calls))
        keep = systematic_resample(log_weights, uniform)
        return torch.zeros_like(keep) if len(calls) == 3 else keep

    monkeypatch.setattr(latent, "systematic_resample", all_from_chain_0)
    lqvae, priors, _, _ = latent_models
    method = LatentSeparator.from_files(lqvae, [priors["drums"], priors["bass"]],
                                        LatentConfig(n_chains=6, window=8, resample=1.0))
    method.progress = False
    mix_codes = torch.randint(0, 16, (8,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        codes0, codes1, prior0, prior1 = method._sample_window(
            [mix_codes.new_zeros(0)] * 2, mix_codes, method._likelihoods(), torch.Generator().manual_seed(2), _NoBar())
        for prior, codes, total in ((method.priors[0], codes0, prior0), (method.priors[1], codes1, prior1)):
            cache = prior.new_cache(codes.shape[0])
            log_p, expected = prior.step(cache, None), torch.zeros(codes.shape[0], dtype=torch.float64)
            for t in range(codes.shape[1]):
                expected += log_p.gather(1, codes[:, t:t + 1]).squeeze(1).double()
                if t + 1 < codes.shape[1]:
                    log_p = prior.step(cache, codes[:, t])
            torch.testing.assert_close(total, expected, atol=1e-4, rtol=0)
    assert len(calls) >= 3
    shared = 0
    while shared < codes0.shape[1] and (codes0[:, shared] == codes0[0, shared]).all() \
            and (codes1[:, shared] == codes1[0, shared]).all():
        shared += 1
    assert shared >= 1  # the draws up to the third resampling are chain 0's, in every chain


class _NoBar:
    def update(self, _):
        pass


def test_resample_option_reaches_the_method_and_is_checked(latent_models, tmp_path, capsys):
    from audiosep.cli import main

    lqvae, priors, _, _ = latent_models
    mix = _mixture(tmp_path / "mix.wav", RATE)
    base = ["separate", str(mix), "-o", str(tmp_path / "out"), "--method", "latent", "--model", str(lqvae),
            str(priors["drums"]), str(priors["bass"]), "--chains", "4", "--window", "6"]
    assert main(base + ["--resample", "0.5"]) == 0
    assert main(base + ["--resample", "1.5"]) == 2
    assert "--resample" in capsys.readouterr().err
    assert main(["separate", str(mix), "-o", str(tmp_path / "nmf"), "--method", "nmf", "--resample", "0.5"]) == 2
    assert "--resample" in capsys.readouterr().err
