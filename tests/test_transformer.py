"""Code transformer prior: causality, the KV cache against the full forward, sampling, checkpoints;
the code datasets and `train_code_prior` (on a stub LQ-VAE, and on a real one when
`audiosep.priors.vqvae.LQVAE` exists)."""
import importlib
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as nnf

from audiosep.config import TrainConfig
from audiosep.errors import UserError
from audiosep.priors.base import Domain, load_checkpoint, load_prior, save_checkpoint
from audiosep.priors.transformer import (CodePriorConfig, CodeTransformer, code_nll, sample_codes,
                                         shared_prefix_attention)
from audiosep.training import codes as codes_module
from audiosep.training.codes import CodePriorRun, CodeWindows, code_windows, encode_source, train_code_prior

N_CODES = 16


def tiny_prior(context=12, seed=0, **kwargs):
    torch.manual_seed(seed)
    return CodeTransformer(N_CODES, context=context, width=16, layers=2, heads=2, **kwargs).eval()


def random_codes(batch, length, seed=1):
    return torch.randint(0, N_CODES, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- the model ------------------------------------------------------------------------------

def test_logits_up_to_t_do_not_depend_on_codes_from_t_on():
    model = tiny_prior()
    codes = random_codes(2, 12)
    changed = codes.clone()
    changed[:, 5:] = (changed[:, 5:] + 3) % N_CODES
    a, b = model(codes), model(changed)
    assert a.shape == (2, 12, N_CODES)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_log_prob_and_loss_agree_and_start_near_uniform():
    model = tiny_prior()
    codes = random_codes(3, 10)
    expected = model(codes).log_softmax(-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(-1)
    torch.testing.assert_close(model.log_prob_codes(codes), expected)
    assert code_nll(model, codes).item() == pytest.approx(-expected.sum().item() / 30, rel=1e-5)
    assert code_nll(model, codes).item() == pytest.approx(math.log(N_CODES), abs=0.1)  # GPT-2 init: ~uniform


def test_cached_steps_and_prime_equal_the_full_forward():
    model = tiny_prior()
    codes = random_codes(3, 12)
    full = model(codes).log_softmax(-1)
    cache, previous, steps = model.new_cache(3), None, []
    for t in range(12):
        steps.append(model.step(cache, previous))
        previous = codes[:, t]
    assert cache.position == 12
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=0, atol=1e-5)
    for known in (0, 1, 7, 11):
        primed, log_p = model.prime(codes[:, :known])
        assert primed.position == known + 1
        torch.testing.assert_close(log_p, full[:, known], rtol=0, atol=1e-5)
    primed, _ = model.prime(codes[:, :7])  # a primed cache continues like a stepped one
    torch.testing.assert_close(model.step(primed, codes[:, 7]), full[:, 8], rtol=0, atol=1e-5)


@pytest.mark.parametrize("shared", [0, 1, 5, 9])
def test_shared_prefix_attention_equals_full_attention(shared):
    g = torch.Generator().manual_seed(shared)
    q = torch.randn(6, 2, 1, 4, generator=g)
    k, v = (torch.randn(6, 2, 9, 4, generator=g) for _ in range(2))
    k[:, :, :shared], v[:, :, :shared] = k[:1, :, :shared], v[:1, :, :shared]  # one prefix in every chain
    torch.testing.assert_close(shared_prefix_attention(q, k, v, shared),
                               nnf.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-6)


def test_select_reindexes_the_chains():
    model = tiny_prior()
    codes = random_codes(3, 8)
    cache = model.new_cache(3)
    model.step(cache, None)
    for t in range(4):
        model.step(cache, codes[:, t])
    index = torch.tensor([2, 0, 2, 1])
    cache.select(index)
    assert cache.batch == 4 and cache.position == 5
    chosen = codes[index]
    torch.testing.assert_close(model.step(cache, chosen[:, 4]), model(chosen).log_softmax(-1)[:, 5],
                               rtol=0, atol=1e-5)
    same_batch = torch.tensor([3, 3, 0, 1])  # as many chains as before: rows moved in place
    cache.select(same_batch)
    chosen = chosen[same_batch]
    torch.testing.assert_close(model.step(cache, chosen[:, 5]), model(chosen).log_softmax(-1)[:, 6],
                               rtol=0, atol=1e-5)
    before = [k.clone() for k in cache.keys]
    cache.share(3)  # declared identical in every chain: a re-indexing leaves them be
    swap = torch.tensor([1, 0, 3, 2])
    cache.select(swap)
    for after, old in zip(cache.keys, before):
        assert torch.equal(after[:, :, :3], old[:, :, :3])
        assert torch.equal(after[:, :, 3:7], old[swap][:, :, 3:7])


def test_sampling_with_the_cache_equals_uncached_sampling():
    model = tiny_prior()
    cached = model.sample(5, 12, temperature=0.8, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    uncached = torch.zeros(5, 0, dtype=torch.long)
    with torch.no_grad():
        for t in range(12):
            padded = torch.cat([uncached, torch.zeros(5, 1, dtype=torch.long)], 1)  # logits[:, t] ignore z_t
            log_p = model(padded).log_softmax(-1)[:, t]
            uncached = torch.cat([uncached, sample_codes(log_p, 0.8, generator).unsqueeze(1)], 1)
    assert cached.shape == (5, 12) and cached.dtype == torch.long
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, model.sample(5, 12, temperature=0.8, generator=torch.Generator().manual_seed(4)))


def test_errors_past_the_context():
    model = tiny_prior(context=4)
    cache, previous = model.new_cache(2), None
    for t in range(4):
        previous = model.step(cache, previous).argmax(-1)
    with pytest.raises(UserError, match="context of 4 codes is full"):
        model.step(cache, previous)
    with pytest.raises(UserError, match="exceed"):
        model(random_codes(1, 5))
    with pytest.raises(UserError, match="exceed"):
        model.prime(random_codes(1, 4))  # START + 4 codes: 5 positions
    with pytest.raises(UserError, match="sample length"):
        model.sample(1, 5)
    with pytest.raises(ValueError, match="position 0"):
        model.step(model.new_cache(1), torch.zeros(1, dtype=torch.long))
    with pytest.raises(UserError, match="multiple of heads"):
        CodeTransformer(N_CODES, width=10, heads=3)


def test_checkpoint_round_trip_with_a_codes_domain(tmp_path):
    model = tiny_prior(dropout=0.1)
    domain = Domain.codes(N_CODES, hop=64, sample_rate=22050, codec="0123456789abcdef")
    path = save_checkpoint(tmp_path / "drums.pt", model, domain)
    loaded = load_prior(path, expected_domain=domain)
    assert isinstance(loaded, CodeTransformer) and loaded.get_config() == model.get_config()
    assert not loaded.training
    codes = random_codes(2, 12)
    torch.testing.assert_close(loaded(codes), model(codes), rtol=0, atol=0)
    other = Domain.codes(N_CODES, hop=64, sample_rate=22050, codec="fedcba9876543210")
    with pytest.raises(UserError, match="fedcba9876543210"):
        load_prior(path, expected_domain=other)


# --- code datasets ----------------------------------------------------------------------------

def test_code_windows_are_slices_drawn_from_seed_and_index():
    tracks = [torch.arange(10), torch.arange(100, 150)]
    windows = CodeWindows(tracks, context=8, length=200, seed=5)
    items = [windows[i] for i in range(200)]
    assert all(w.shape == (8,) and w.dtype == torch.long for w in items)
    assert all(torch.equal(w, w[0] + torch.arange(8)) for w in items)  # contiguous slices of one track
    assert torch.equal(CodeWindows(tracks, 8, 200, seed=5)[17], items[17])
    first = sum(int(w[0] < 100) for w in items)
    assert 5 <= first <= 40  # weights 3 : 43 windows → ≈ 13 of 200
    assert {int(w[0]) for w in items if w[0] < 100} <= {0, 1, 2}
    with pytest.raises(ValueError):
        CodeWindows([torch.arange(7)], context=8, length=1, seed=0)


def test_code_windows_leave_out_short_tracks():
    codes = {"long": torch.arange(20), "short": torch.arange(5)}
    with pytest.warns(UserWarning, match="1 track.*short"):
        windows = code_windows(codes, context=8, length=4, seed=0, split="train", hop=64, sample_rate=22050)
    assert len(windows.tracks) == 1
    with pytest.raises(UserError, match="no valid track is at least 8 codes"):
        code_windows({"short": torch.arange(5)}, 8, 4, 0, "valid", 64, 22050)


class StubLQVAE(torch.nn.Module):
    """Codes of the mean of a moving average (±hop samples) over each frame, in 16 bins: an
    encoder whose receptive field reaches past its frame, like a convolutional one."""

    hop, sample_rate = 8, 8000

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def code_domain(self, level=-1):
        return Domain.codes(N_CODES, self.hop, self.sample_rate, "stub000000000000")

    def encode(self, x, level=-1):
        width = 2 * self.hop + 1
        smooth = nnf.conv1d(x, torch.ones(1, 1, width) / width, padding=self.hop)
        frames = smooth.view(x.shape[0], -1, self.hop).mean(-1)
        return ((frames.clamp(-1, 1) + 1) / 2 * (N_CODES - 1e-3)).long()


def write_stems(root, seconds=(1.0, 0.5), rate=StubLQVAE.sample_rate):
    """A stems dataset: train/valid tracks with drums and bass (random walks, so codes vary)."""
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        for k, length in enumerate(seconds):
            folder = root / split / f"{split}{k}"
            folder.mkdir(parents=True)
            n = int(length * rate)
            stems = {s: np.clip(np.cumsum(rng.normal(0, 0.05, n)), -0.9, 0.9).astype(np.float32)
                     for s in ("drums", "bass")}
            stems["mix"] = stems["drums"] + stems["bass"]
            for name, wav in stems.items():
                sf.write(folder / f"{name}.wav", wav, rate)
    return root


def test_blocked_encoding_equals_whole_track_encoding(tmp_path):
    root = write_stems(tmp_path / "data")
    lqvae = StubLQVAE()
    blocked = encode_source(lqvae, root, "drums", "train", block_samples=64, margin_samples=16)
    assert sorted(blocked) == ["train0", "train1"]
    for name, codes in blocked.items():
        wav, _ = sf.read(root / "train" / name / "drums.wav", dtype="float32")
        whole = lqvae.encode(torch.from_numpy(wav)[None, None])[0]
        assert codes.dtype == torch.long and codes.shape == (len(wav) // 8,)
        assert torch.equal(codes, whole)
        assert len(codes.unique()) > 3
    with pytest.raises(UserError, match="no train track has source 'vocals'"):
        encode_source(lqvae, root, "vocals", "train")


def test_pooled_codes_keep_same_named_tracks_of_two_datasets(tmp_path):
    first, second = write_stems(tmp_path / "a"), write_stems(tmp_path / "b", seconds=(0.75,))
    pooled = codes_module.pooled_codes(StubLQVAE(), [first, second], "bass", "train")
    assert sorted(pooled) == ["0/train0", "0/train1", "1/train0"]
    assert torch.equal(pooled["1/train0"], encode_source(StubLQVAE(), second, "bass", "train")["train0"])
    assert pooled["1/train0"].shape[0] != pooled["0/train0"].shape[0]


def test_train_code_prior_on_a_stub_lqvae(tmp_path, monkeypatch):
    root = write_stems(tmp_path / "data")
    monkeypatch.setattr(codes_module, "load_lqvae", lambda path, device: StubLQVAE())
    run = CodePriorRun(CodePriorConfig(context=16, width=16, layers=1, heads=2),
                       TrainConfig(steps=3, batch_size=4, checkpoint_every=3, valid_every=3, valid_batches=1,
                                   progress=False))
    out = tmp_path / "drums.pt"
    result = train_code_prior(root, "drums", "unused.pt", out, run, valid_items=4)
    assert result["step"] == 3 and math.isfinite(result["valid_loss"])
    prior = load_prior(out, expected_domain=StubLQVAE().code_domain())
    assert isinstance(prior, CodeTransformer) and prior.get_config()["context"] == 16
    assert load_checkpoint(out)["extra"]["data"] == {"source": "drums"}
    with pytest.raises(UserError, match="trained with source 'drums', not 'bass'"):
        train_code_prior(root, "bass", "unused.pt", out, run, valid_items=4)


def test_train_code_prior_refuses_a_checkpoint_of_another_kind(tmp_path):
    path = save_checkpoint(tmp_path / "prior.pt", tiny_prior(), Domain.codes(N_CODES, 8, 8000, "x"))
    with pytest.raises(UserError, match="a code_transformer checkpoint, not an LQ-VAE"):
        train_code_prior(tmp_path, "drums", path, tmp_path / "out.pt")


def _lqvae_class():
    try:
        return getattr(importlib.import_module("audiosep.priors.vqvae"), "LQVAE", None)
    except ImportError:
        return None


@pytest.mark.skipif(_lqvae_class() is None, reason="audiosep.priors.vqvae.LQVAE not written yet")
def test_train_code_prior_on_a_real_lqvae_checkpoint(tmp_path):
    lqvae_class = _lqvae_class()
    torch.manual_seed(0)
    lqvae = lqvae_class(sample_rate=8000, hops=(16,), n_codes=N_CODES, code_dim=8, width=8, res_depth=1)
    root = write_stems(tmp_path / "data")
    wav, _ = sf.read(root / "train" / "train0" / "bass.wav", dtype="float32")
    lqvae(torch.from_numpy(wav[:4096])[None, None])  # training mode: the codebook starts from these latents
    lqvae.eval()
    lqvae_path = save_checkpoint(tmp_path / "lqvae.pt", lqvae, Domain.waveform(8000))
    blocked = encode_source(lqvae, root, "bass", "train", block_samples=256)
    with torch.no_grad():
        whole = lqvae.encode(torch.from_numpy(wav[: len(wav) // 16 * 16])[None, None])[0]
    assert len(whole.unique()) > 1  # a codebook in use, not one constant code
    assert (blocked["train0"] == whole).float().mean() > 0.99  # the margin covers the encoder (near-ties may flip)
    run = CodePriorRun(CodePriorConfig(context=16, width=16, layers=1, heads=2),
                       TrainConfig(steps=2, batch_size=2, checkpoint_every=2, valid_every=2, valid_batches=1,
                                   progress=False))
    out = tmp_path / "bass.pt"
    train_code_prior(root, "bass", lqvae_path, out, run, valid_items=2)
    prior = load_prior(out, expected_domain=load_prior(lqvae_path).code_domain())
    assert prior.n_codes == N_CODES
