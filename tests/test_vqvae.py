"""LQ-VAE: shapes and the code round trip, the EMA codebook against a hand computation, the
linearization loss (zero when the code space is linear, equal to a brute-force computation,
gradients where the docstring says), the sum table against direct quantisation (both
orientations of α, chunked = unchunked), fingerprints, checkpoints, and a tiny training run
that stores its sum table."""
import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from audiosep.config import TrainConfig, from_dict
from audiosep.data.stems import SourceCrops
from audiosep.errors import UserError
from audiosep.priors.base import Domain, load_checkpoint, load_prior, save_checkpoint
from audiosep.priors.vqvae import (
    LQVAE,
    TIE_RULE,
    TIE_TOLERANCE,
    Codebook,
    LQVAELoss,
    LQVAELossConfig,
    first_nearest,
    linearity,
    linearization_loss,
    load_sum_table,
    stage_strides,
    stage_widths,
    stored_sum_table,
    sum_table,
)
from audiosep.training.lqvae import LQVAERun, mixture_level_db, source_crops, train_lqvae

RATE = 8000


def _tiny(hops=(4, 16), n_codes=16, res_depth=1, seed=0):
    torch.manual_seed(seed)
    return LQVAE(sample_rate=RATE, hops=hops, n_codes=n_codes, code_dim=4, width=8, res_depth=res_depth)


def _initialised(model, x):
    """The model after one training-mode pass over `x` (codebooks drawn from its latents), in eval mode."""
    model.train()
    torch.manual_seed(1)
    model(x)
    return model.eval()


def test_stages_and_widths():
    assert stage_strides(64, 4) == [4, 4, 4] and stage_strides(32, 4) == [4, 4, 2]
    assert stage_strides(8, 2) == [2, 2, 2]
    assert stage_widths([4, 4, 4], 32, 0.5) == [8, 16, 32]
    assert stage_widths([2, 2, 2], 64, 0.0) == [64, 64, 64]  # Jukebox: one width


def test_shapes_and_code_round_trip():
    x = 0.1 * torch.randn(3, 1, 64)
    model = _initialised(_tiny(), x)
    for level, hop in ((0, 4), (-1, 16), (1, 16)):
        assert model.hop(level) == hop
        e = model.latents(x, level)
        codes = model.encode(x, level)
        assert e.shape == (3, 4, 64 // hop) and codes.shape == (3, 64 // hop) and codes.dtype == torch.long
        assert 0 <= codes.min() and codes.max() < 16
        assert torch.equal(codes, model.quantise(e, level))
        embedded = model.embed(codes, level)
        assert embedded.shape == (3, 4, 64 // hop)
        assert torch.equal(model.quantise(embedded, level), codes)  # an entry is its own nearest entry
        assert model.decode(codes, level).shape == (3, 1, 64)
    assert model.codebook().shape == (16, 4)
    outputs = model(x)  # eval mode: no codebook update
    assert len(outputs) == 2 and outputs[1].reconstruction.shape == x.shape
    torch.testing.assert_close(outputs[1].reconstruction, model.decode(outputs[1].codes))
    with pytest.raises(UserError, match="multiple of its hop 16"):
        model.encode(torch.zeros(1, 1, 40))
    with pytest.raises(UserError, match="mono waveforms"):
        model.encode(torch.zeros(1, 2, 64))
    with pytest.raises(UserError, match="level 2 does not exist"):
        model.hop(2)
    with pytest.raises(UserError, match="increasing powers of 2"):
        LQVAE(hops=(16, 4))


def test_codebook_ema_update_and_restart_by_hand():
    book = Codebook(n_codes=3, code_dim=2, decay=0.9, restart_threshold=0.5)
    torch.manual_seed(0)
    first = torch.randn(6, 2)
    book.update(first, torch.zeros(6, dtype=torch.long))  # first batch: entries drawn from it
    assert bool(book.initialised)
    assert all(any(torch.equal(row, f) for f in first) for row in book.embeddings)
    size, total = book.cluster_size.clone(), book.cluster_sum.clone()
    flat = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    codes = torch.tensor([0, 0, 1])  # entry 2 unused
    book.update(flat, codes)
    expect_size = 0.9 * size + 0.1 * torch.tensor([2.0, 1.0, 0.0])
    expect_sum = 0.9 * total + 0.1 * torch.stack([flat[0] + flat[1], flat[2], torch.zeros(2)])
    torch.testing.assert_close(book.cluster_size, expect_size)
    torch.testing.assert_close(book.embeddings, expect_sum / expect_size[:, None])
    assert not any(torch.allclose(book.embeddings[2], f) for f in flat)
    for _ in range(6):  # entry 2 stays unused: its averaged usage 0.9^7 < 0.5, so it restarts
        book.update(flat, codes)
    assert any(torch.allclose(book.embeddings[2], f) for f in flat)
    assert book.cluster_size[2] >= 0.5


def test_codebooks_learn_only_in_training_mode():
    x = 0.1 * torch.randn(2, 1, 64)
    model = _tiny()
    model.eval()
    model(x)
    assert not bool(model.codebooks[0].initialised)
    model.train()
    model(x)
    assert all(bool(b.initialised) for b in model.codebooks)
    before = model.codebook().clone()
    model(x)
    assert not torch.equal(before, model.codebook())


def _linear_model_with_sums(a, b):
    """A one-level model whose encoder is linear (no residual blocks: no ReLU) and whose codebook
    holds E(a), E(b) and ½E(a) + ½E(b) frame by frame (n_codes = 3T): q is exact on a and b,
    and every sum of their codes is a code."""
    torch.manual_seed(0)
    frames = a.shape[-1] // 8
    model = LQVAE(sample_rate=RATE, hops=(8,), n_codes=3 * frames, code_dim=4, width=4, res_depth=0).eval()
    with torch.no_grad():
        e_a, e_b = model.latents(a)[0].t(), model.latents(b)[0].t()
        model.codebook().copy_(torch.cat([e_a, e_b, 0.5 * (e_a + e_b)]))
    return model


def test_linearization_loss_is_zero_when_the_code_space_is_linear():
    torch.manual_seed(3)
    a, b = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    model = _linear_model_with_sums(a, b)
    batch = torch.cat([a, b])
    quantised = model.straight_through(model.latents(batch))
    assert linearization_loss(model, batch, quantised, 0).item() < 1e-10
    report = linearity(model, a, b)
    assert report["code_match"] == 1.0 and report["latent_distance"] < 1e-5


def test_linearization_loss_against_brute_force_and_its_gradients():
    x = 0.1 * torch.randn(4, 1, 64, generator=torch.Generator().manual_seed(2))  # a draw whose loss is not 0
    model = _initialised(_tiny(hops=(16,)), x)
    quantised = model.straight_through(model.latents(x))
    loss = linearization_loss(model, x, quantised, 0)
    c = model.codebook().double()

    def code(v):  # (B, D, T) → nearest entries (B, T) by an explicit float64 distance, ties to the lowest index
        v = v.double().transpose(1, 2)
        scale = v.pow(2).sum(-1, keepdim=True) + c.pow(2).sum(1).amax()
        return first_nearest(((v[..., None, :] - c) ** 2).sum(-1), scale)

    with torch.no_grad():
        z = code(model.latents(x))
        z_sum = code(0.5 * (c[z[:2]] + c[z[2:]]).transpose(1, 2))
        z_mix = code(model.latents(0.5 * (x[:2] + x[2:])))
    expect = (c[z_sum] - c[z_mix]).pow(2).mean()
    torch.testing.assert_close(loss.double(), expect)
    assert expect > 0
    loss.backward()
    assert all(p.grad is None for p in model.decoders.parameters())  # the decoder takes no part
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders.parameters())


def test_loss_terms_and_odd_batches():
    x = 0.1 * torch.randn(4, 1, 64)
    model = _initialised(_tiny(), x)
    loss_fn = LQVAELoss(LQVAELossConfig(stft_sizes=(32, 8)))
    terms = loss_fn.terms(model, x)
    assert set(terms) == {"waveform", "spectral", "commitment", "linearization"}
    torch.testing.assert_close(loss_fn(model, x), sum(terms.values()))
    outputs = model(x)
    expect = sum(((o.reconstruction - x) ** 2).sum() / (x**2).sum() for o in outputs) / 2
    torch.testing.assert_close(terms["waveform"], expect)
    with pytest.raises(UserError, match="batch size must be even, got 3"):
        loss_fn(model, x[:3])


@pytest.mark.parametrize("alpha", [(0.5, 0.5), (0.3, 0.7), (0.7, 0.3)])
def test_sum_table_matches_direct_quantisation(alpha):
    gen = torch.Generator().manual_seed(4)
    codebook = torch.randn(64, 8, generator=gen)
    table = sum_table(codebook, alpha)
    assert table.shape == (64, 64) and table.dtype == torch.long
    i, j = torch.randint(64, (1000,), generator=gen), torch.randint(64, (1000,), generator=gen)
    c = codebook.double()
    v = alpha[0] * c[i] + alpha[1] * c[j]  # row i is source 0, weighted by α₀
    distances = ((v[:, None, :] - c[None]) ** 2).sum(-1)
    best, direct = distances.min(-1)
    second = distances.sort(-1).values[:, 1]
    clear = second - best > 1e-3  # the nearest entry is unique (at ½, ½ the midpoint ties c_i with c_j)
    assert clear.float().mean() > 0.5
    assert torch.equal(table[i, j][clear], direct[clear])
    tolerance = TIE_TOLERANCE * (v.pow(2).sum(-1) + c.pow(2).sum(1).amax())[:, None]
    gaps = distances - best[:, None]
    lowest = (gaps <= tolerance).to(torch.uint8).argmax(-1)  # the rule, in float64 from explicit distances
    tied = (gaps <= tolerance).sum(-1) > 1
    if alpha == (0.5, 0.5):
        assert tied.float().mean() > 0.1  # the midpoint case is common
    unambiguous = ~((gaps > 0.5 * tolerance) & (gaps < 2 * tolerance)).any(-1)  # no gap near the threshold
    assert unambiguous.float().mean() > 0.99
    assert torch.equal(table[i, j][unambiguous], lowest[unambiguous])  # ties to the lowest index, on any CPU
    assert torch.equal(sum_table(codebook, alpha, chunk=7), table)  # blocks of 7 rows, the last one short
    assert torch.equal(sum_table(codebook, alpha[::-1]), table.t())  # swapping the sources transposes


@pytest.mark.parametrize("alpha", [(0.3, 0.7), (0.5, 0.5)])
def test_sum_table_agrees_with_the_models_quantiser(alpha):
    x = 0.1 * torch.randn(4, 1, 64)
    model = _initialised(_tiny(hops=(16,)), x)
    table = sum_table(model.codebook(), alpha)
    c = model.codebook()
    i, j = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    sums = (alpha[0] * c[i.reshape(-1)] + alpha[1] * c[j.reshape(-1)]).t()[None]  # (1, D, 256)
    assert torch.equal(model.quantise(sums).view(16, 16), table)  # ties included (i = j's midpoint case)


def test_first_nearest_breaks_ties_to_the_lowest_index_whatever_the_rounding():
    scores = torch.tensor([[3.0, 1.0, 1.0 + 1e-7, 2.0],   # a tie within rounding: the lower index
                           [3.0, 1.0 + 1e-7, 1.0, 2.0],   # the same tie, rounded the other way
                           [1.0, 0.5, 0.5, 0.5],          # three exact ties
                           [0.9, 1.0, 1.2, 0.7]])         # no tie
    assert first_nearest(scores, torch.ones(4, 1)).tolist() == [1, 1, 1, 3]
    assert first_nearest(scores.double(), torch.ones(4, 1, dtype=torch.float64)).tolist() == [1, 1, 1, 3]
    assert first_nearest(torch.tensor([0.0, 1e-3]), torch.tensor(1.0)).item() == 0  # 1e-3 is no tie
    assert first_nearest(torch.tensor([1e-3, 0.0]), torch.tensor(1.0)).item() == 1


def test_fingerprint_is_deterministic_and_follows_the_codebook():
    x = 0.1 * torch.randn(2, 1, 64)
    model = _initialised(_tiny(), x)
    first = model.fingerprint()
    assert len(first) == 16 and int(first, 16) >= 0
    assert model.fingerprint() == first and model.fingerprint(1) == first
    assert model.fingerprint(0) != first
    twin = _tiny(seed=5)
    twin.load_state_dict(model.state_dict())
    assert twin.fingerprint() == first  # the state, not the object
    with torch.no_grad():
        model.codebook()[3, 1] += 1e-6
    assert model.fingerprint() != first
    assert model.code_domain() == Domain.codes(16, 16, RATE, model.fingerprint())


def test_checkpoint_round_trip(tmp_path):
    x = 0.1 * torch.randn(2, 1, 64)
    model = _initialised(_tiny(), x)
    path = save_checkpoint(tmp_path / "lq.pt", model, Domain.waveform(RATE))
    loaded = load_prior(path, expected_domain=Domain.waveform(RATE))
    assert isinstance(loaded, LQVAE) and loaded.get_config() == model.get_config()
    assert loaded.fingerprint() == model.fingerprint() and loaded.code_domain() == model.code_domain()
    for level in (0, 1):
        codes = model.encode(x, level)
        assert torch.equal(loaded.encode(x, level), codes)
        torch.testing.assert_close(loaded.decode(codes, level), model.decode(codes, level))


def _write_stems(root, rate=RATE, seconds=0.5):
    """train and valid splits of 2 tracks each: drums (noise bursts) and bass (sines)."""
    rng = np.random.default_rng(0)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    for split in ("train", "valid"):
        for k in range(2):
            folder = root / split / f"{split}{k}"
            folder.mkdir(parents=True)
            drums = (rng.normal(0, 0.2, n) * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.float32)
            bass = (0.3 * np.sin(2 * np.pi * (55 + 20 * k) * t)).astype(np.float32)
            for name, wav in (("drums", drums), ("bass", bass), ("mix", drums + bass)):
                sf.write(folder / f"{name}.wav", wav, rate)
    return root


def test_train_lqvae_stores_the_sum_table(tmp_path):
    data = _write_stems(tmp_path / "data")
    run = from_dict(LQVAERun, {
        "model": {"sample_rate": RATE, "hops": [16], "n_codes": 8, "code_dim": 4, "width": 4, "res_depth": 1},
        "train": {"steps": 3, "batch_size": 4, "valid_every": 3, "progress": False, "epoch_items": 12},
        "loss": {"stft_sizes": [64, 16]},
    })
    out = tmp_path / "lq.pt"
    result = train_lqvae(data, ["drums", "bass"], out, run, crop_seconds=0.05, valid_items=4)
    assert result["step"] == 3
    payload = load_checkpoint(out)
    model = load_prior(out)
    stored = payload["extra"]["sum_table"]
    assert stored["alpha"] == [0.5, 0.5] and stored["level"] == 0
    assert stored["fingerprint"] == model.fingerprint()
    assert torch.equal(stored["table"].long(), sum_table(model.codebook()))
    assert payload["extra"]["data"] == {"sources": "drums,bass"} and payload["optimizer"] is not None
    crops = source_crops(data, ["drums", "bass"], "train", 12, 400, RATE, seed=0)  # the run's 3 × 4 crops
    drums = SourceCrops(data, "drums", split="train", crop_samples=400, sample_rate=RATE, length=6, seed=0)
    bass = SourceCrops(data, "bass", split="train", crop_samples=400, sample_rate=RATE, length=6, seed=1)
    assert torch.equal(crops[4], drums[2]) and torch.equal(crops[5], bass[2])  # item i: source i % K
    mixtures = np.stack([0.5 * (crops[2 * i].numpy() + crops[2 * i + 1].numpy()) for i in range(6)])
    assert payload["extra"]["level_db"] == pytest.approx(10 * np.log10(np.mean(mixtures.astype(np.float64) ** 2)))
    assert mixture_level_db(crops) == payload["extra"]["level_db"]
    assert load_prior(out).domain == Domain.waveform(RATE)
    assert torch.equal(load_sum_table(out, model), stored["table"].long())
    assert stored["ties"] == TIE_RULE
    older = {**payload, "extra": {**payload["extra"], "sum_table": {**stored, "ties": None,
                                                                    "table": torch.zeros_like(stored["table"])}}}
    assert stored_sum_table(older, model, (0.5, 0.5)) is None  # a table of another tie rule is recomputed
    assert torch.equal(load_sum_table(older, model), stored["table"].long())
    assert torch.equal(load_sum_table(payload, model, (0.3, 0.7)), sum_table(model.codebook(), (0.3, 0.7)))
    with torch.no_grad():
        model.codebook()[0] += 1.0  # another codebook: the stored table is not used
    assert torch.equal(load_sum_table(payload, model), sum_table(model.codebook()))
    odd = dataclasses.replace(run, train=TrainConfig(steps=3, batch_size=3, progress=False))
    with pytest.raises(UserError, match="must be even"):
        train_lqvae(data, ["drums", "bass"], tmp_path / "odd.pt", odd)
