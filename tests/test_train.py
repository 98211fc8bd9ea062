"""Config loading, EMA, and the shared training loop: checkpoints, exact resume, torchrun DDP."""
import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import Dataset

from audiosep.config import TrainConfig, from_dict, load_yaml, to_dict
from audiosep.errors import UserError
from audiosep.priors import Domain, NCSNConfig, NCSNv1, NCSNv2, dsm_loss, load_prior
from audiosep.priors.base import load_checkpoint
from audiosep.training import EMA, seed_everything, train, validation_loss

DOMAIN = Domain.image((1, 16, 16))


# --- config -------------------------------------------------------------------------------

@dataclasses.dataclass
class _Experiment:
    model: NCSNConfig
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    name: str = "run"


def test_unknown_key_is_an_error_naming_it_and_the_allowed_keys():
    with pytest.raises(UserError) as excinfo:
        from_dict(TrainConfig, {"lr": 1e-3, "learning_rate": 1e-3})
    message = str(excinfo.value)
    assert "'learning_rate'" in message and "lr" in message and "ema_decay" in message and "\n" not in message
    with pytest.raises(UserError) as excinfo:
        from_dict(_Experiment, {"model": {"nff": 3}})
    assert "'model.nff'" in str(excinfo.value) and "n_res_blocks" in str(excinfo.value)


def test_nested_config_types_and_defaults():
    config = from_dict(_Experiment, {"model": {"version": "v1", "ch_mult": [1, 2], "sigma_max": None},
                                     "train": {"lr": "2e-4", "steps": 1e3, "adam_betas": [0.5, 0.9]}})
    assert config.model == NCSNConfig(version="v1", ch_mult=(1, 2), sigma_max=None)
    assert config.train.lr == 2e-4 and config.train.steps == 1000 and isinstance(config.train.steps, int)
    assert config.train.adam_betas == (0.5, 0.9) and config.train.batch_size == TrainConfig().batch_size
    assert from_dict(_Experiment, to_dict(config)) == config


@pytest.mark.parametrize("data, needle", [
    ({"model": {"version": "v3"}}, "'model.version' must be one of"),
    ({"model": {"nf": 2.5}}, "'model.nf' must be an integer"),
    ({"model": {"nf": True}}, "'model.nf' must be an integer"),
    ({"model": {"ch_mult": 2}}, "'model.ch_mult' must be a list"),
    ({"model": {}, "train": {"tensorboard": "yes"}}, "'train.tensorboard' must be true or false"),
    ({"model": {}, "train": {"adam_betas": [0.9]}}, "'train.adam_betas' must have 2 items"),
    ({"model": {}, "train": {"lr": "fast"}}, "'train.lr' must be a number"),
    ({"model": {}, "train": {"lr": -1}}, "lr must be a finite number > 0"),
    ({"model": {}, "train": {"lr": float("nan")}}, "lr must be a finite number > 0"),
    ({"model": {}, "train": {"adam_betas": [2, 2]}}, "adam_betas must be two numbers in [0, 1)"),
    ({"model": {}, "train": {"weight_decay": float("nan")}}, "weight_decay must be a finite number >= 0"),
    ({"model": {}, "train": {"grad_clip": float("nan")}}, "grad_clip must be a finite number > 0 or null"),
    ({"model": {}, "train": {"state_dtype": "fp16"}}, "state_dtype must be one of fp32, bf16"),
    ({"model": {}, "train": {"num_workers": 100000}}, "num_workers must be 0 to 64"),
    ({"model": {"channels": 0}}, "channels must be >= 1"),
    ({"model": {"ch_mult": []}}, "ch_mult must be one or more integers >= 1"),
    ({"model": {"sigma_max": 1e300, "sigma_min": 1e-300}}, "need 0 < sigma_min < sigma_max <= 1e6"),
    ({"model": {"sigma_max": float("nan")}}, "need 0 < sigma_min < sigma_max <= 1e6"),
    ({"train": {}}, "missing required key 'model'"),
    ({"model": [1, 2]}, "'model' must be a mapping"),
])
def test_bad_values_are_user_errors(data, needle):
    with pytest.raises(UserError) as excinfo:
        from_dict(_Experiment, data)
    assert needle in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_load_yaml(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  nf: 8\ntrain:\n  lr: 1e-4\n  grad_clip: null\n")
    config = load_yaml(_Experiment, path)
    assert config.model.nf == 8 and config.train.lr == 1e-4 and config.train.grad_clip is None
    path.write_text("model:\n  nf: 8\ntrian:\n  lr: 1e-4\n")
    with pytest.raises(UserError, match=r"exp\.yaml: unknown key 'trian'"):
        load_yaml(_Experiment, path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML at line"):
        load_yaml(_Experiment, path)
    with pytest.raises(UserError, match="config file not found"):
        load_yaml(_Experiment, tmp_path / "missing.yaml")


# --- EMA ----------------------------------------------------------------------------------

def test_ema_follows_warmed_up_recursion():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, -1.0, 4.0, 0.5, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        assert ema.state_dict()["weight"].item() == pytest.approx(expected, rel=1e-6)
    with ema.swapped_into(model):
        assert model.weight.item() == pytest.approx(expected, rel=1e-6)
    assert model.weight.item() == 3.0


# --- training loop ------------------------------------------------------------------------

class _RandomCrops(Dataset):
    """Fixed 1×16×24 'spectrograms'; an item is a random 16-frame crop (torch RNG) with a random
    gain (NumPy RNG), like a stems dataset drawing crops."""

    def __init__(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        self.data = torch.rand(n, 1, 16, 24, generator=gen) ** 4

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        start = int(torch.randint(0, 9, ()).item())
        gain = 0.8 + 0.4 * np.random.rand()
        return self.data[i, :, :, start:start + 16] * float(gain)


def _tiny_model(cls=NCSNv2, seed=0):
    seed_everything(seed)
    return cls(nf=4, ch_mult=(1, 2), sigmas=[1.0, 0.3, 0.1, 0.03])


def _config(**changes):
    base = dict(steps=8, batch_size=4, lr=2e-3, checkpoint_every=3, valid_every=2, valid_batches=2, seed=5,
                progress=False, ema_decay=0.9)
    return TrainConfig(**{**base, **changes})


class _Stop(Exception):
    pass


def _stop_at(stop_step):
    def callback(step, logs):
        if step == stop_step:
            raise _Stop

    return callback


def _states_equal(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_train_writes_loadable_checkpoint_with_ema(tmp_path):
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, dsm_loss, _RandomCrops(20, 0), _RandomCrops(8, 1), _config(), tmp_path / "p.pt", DOMAIN)
    assert result["step"] == 8 and np.isfinite(result["loss"]) and np.isfinite(result["valid_loss"])
    payload = load_checkpoint(tmp_path / "p.pt")
    assert payload["step"] == 8 and payload["kind"] == "ncsn_v2"
    assert payload["extra"]["train_config"]["lr"] == 2e-3
    assert not _states_equal(payload["state_dict"], before)  # it trained
    assert _states_equal(payload["state_dict"], model.state_dict())
    prior = load_prior(tmp_path / "p.pt", expected_domain=DOMAIN)
    assert _states_equal(prior.state_dict(), payload["ema"])
    assert not _states_equal(payload["ema"], payload["state_dict"])
    assert model.domain == DOMAIN


@pytest.mark.parametrize("cls", [NCSNv1, NCSNv2])
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path, cls):
    train_set, valid_set = _RandomCrops(18, 0), _RandomCrops(8, 1)  # 4 batches per epoch: resumes mid-epoch
    whole = _tiny_model(cls)
    train(whole, dsm_loss, train_set, valid_set, _config(), tmp_path / "whole.pt", DOMAIN)

    first = _tiny_model(cls)
    with pytest.raises(_Stop):  # interrupted at step 5: the last checkpoint is from step 3
        train(first, dsm_loss, train_set, valid_set, _config(), tmp_path / "cut.pt", DOMAIN, callback=_stop_at(5))
    assert load_checkpoint(tmp_path / "cut.pt")["step"] == 3
    resumed = _tiny_model(cls, seed=99)  # a fresh process would build the model anew
    steps_seen = []
    train(resumed, dsm_loss, train_set, valid_set, _config(), tmp_path / "cut.pt", DOMAIN,
          callback=lambda step, logs: steps_seen.append(step))
    assert steps_seen == [4, 5, 6, 7, 8]

    a, b = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(tmp_path / "cut.pt")
    assert _states_equal(a["state_dict"], b["state_dict"])
    assert _states_equal(a["ema"], b["ema"])
    assert a["extra"]["valid_loss"] == b["extra"]["valid_loss"]
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg_sq"], b["optimizer"]["state"][0]["exp_avg_sq"])


def test_a_bf16_state_checkpoint_is_smaller_and_resumes_exactly(tmp_path):
    """state_dtype bf16: Adam moments stored (and rounded in memory) as bfloat16, the weights
    and EMA float32; resuming from the file equals the uninterrupted run bit for bit."""
    train_set, valid_set = _RandomCrops(18, 0), _RandomCrops(8, 1)
    config = _config(state_dtype="bf16", steps=9)
    train(_tiny_model(), dsm_loss, train_set, valid_set, config, tmp_path / "whole.pt", DOMAIN)
    with pytest.raises(_Stop):  # the last checkpoint before the stop is step 6
        train(_tiny_model(), dsm_loss, train_set, valid_set, config, tmp_path / "cut.pt", DOMAIN,
              callback=_stop_at(7))
    train(_tiny_model(seed=99), dsm_loss, train_set, valid_set, config, tmp_path / "cut.pt", DOMAIN)
    a, b = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(tmp_path / "cut.pt")
    assert _states_equal(a["state_dict"], b["state_dict"]) and _states_equal(a["ema"], b["ema"])
    moments = a["optimizer"]["state"][0]
    assert torch.equal(moments["exp_avg_sq"], b["optimizer"]["state"][0]["exp_avg_sq"])
    assert moments["exp_avg"].dtype == moments["exp_avg_sq"].dtype == torch.bfloat16
    assert float(moments["step"]) == 9.0  # the count is not rounded (bf16 stops counting at 256)
    assert {v.dtype for v in a["ema"].values()} == {v.dtype for v in a["state_dict"].values()} == {torch.float32}

    train(_tiny_model(), dsm_loss, train_set, valid_set, _config(steps=9), tmp_path / "fp32.pt", DOMAIN)
    fp32 = load_checkpoint(tmp_path / "fp32.pt")
    ratio = sum(t.numel() * t.element_size() for t in _tensors(a)) / sum(
        t.numel() * t.element_size() for t in _tensors(fp32))
    assert ratio == pytest.approx(0.75, abs=0.01)  # (4 + 4 + 2 + 2) / (4 + 4 + 4 + 4) bytes per weight
    # close to the float32 run it departs from at each checkpoint by a rounding
    assert all(torch.allclose(x, y, rtol=0.05, atol=1e-3) for x, y in
               zip(a["state_dict"].values(), fp32["state_dict"].values()))


def _tensors(payload):
    """The weight, EMA and moment tensors of a training checkpoint."""
    moments = [v for state in payload["optimizer"]["state"].values() for k, v in state.items() if k != "step"]
    return [*payload["state_dict"].values(), *payload["ema"].values(), *moments]


class _EpochCrops(_RandomCrops):
    """Crops that depend on (epoch, i) only, like `SourceCrops`; records the epochs it is told."""

    def __init__(self, n, seed):
        super().__init__(n, seed)
        self.epoch, self.epochs = 0, []

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.epochs.append(epoch)

    def __getitem__(self, i):
        rng = np.random.default_rng([self.epoch, i])
        start = int(rng.integers(9))
        return self.data[i, :, :, start:start + 16] * float(0.8 + 0.4 * rng.random())


def test_every_epoch_tells_the_dataset_its_number_also_after_a_resume(tmp_path):
    crops = _EpochCrops(8, 0)  # 2 batches of 4 per epoch
    train(_tiny_model(), dsm_loss, crops, None, _config(steps=5), tmp_path / "p.pt", DOMAIN)
    assert crops.epochs == [0, 1, 2]
    resumed = _EpochCrops(8, 0)
    train(_tiny_model(), dsm_loss, resumed, None, _config(steps=8), tmp_path / "p.pt", DOMAIN)
    assert resumed.epochs == [2, 3]  # step 5 is the second batch of epoch 2


def test_a_run_continued_to_more_steps_equals_one_that_long_from_the_start(tmp_path):
    """The data of step s must not depend on `steps` (the datasets' length is `epoch_items`)."""
    train(_tiny_model(), dsm_loss, _EpochCrops(8, 0), None, _config(steps=8), tmp_path / "whole.pt", DOMAIN)
    train(_tiny_model(), dsm_loss, _EpochCrops(8, 0), None, _config(steps=3), tmp_path / "grown.pt", DOMAIN)
    train(_tiny_model(), dsm_loss, _EpochCrops(8, 0), None, _config(steps=8), tmp_path / "grown.pt", DOMAIN)
    a, b = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(tmp_path / "grown.pt")
    assert _states_equal(a["state_dict"], b["state_dict"]) and _states_equal(a["ema"], b["ema"])


def test_audio_training_sets_have_epoch_items_whatever_the_steps(tmp_path):
    from audiosep.spectral import get_frontend
    from audiosep.training.mel import patch_sets

    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        for t in range(2):
            track = root / split / f"t{t}"
            track.mkdir(parents=True)
            stems = {source: 0.3 * rng.standard_normal(16000).astype("float32") for source in ("piano", "violin")}
            for name, audio in {**stems, "mix": stems["piano"] + stems["violin"]}.items():
                sf.write(track / f"{name}.wav", audio, 16000)
    frontend = get_frontend("default")
    short, long = (patch_sets(root, "piano", frontend, TrainConfig(steps=n, epoch_items=32), valid_items=2)[0]
                   for n in (10, 100000))
    assert len(short) == len(long) == 32
    short.set_epoch(1), long.set_epoch(1)
    assert torch.equal(short[5], long[5])
    long.set_epoch(2)
    assert not torch.equal(short[5], long[5])


def test_resume_refuses_another_model_or_domain(tmp_path):
    train(_tiny_model(), dsm_loss, _RandomCrops(8, 0), None, _config(steps=2), tmp_path / "p.pt", DOMAIN)
    other = NCSNv2(nf=6, ch_mult=(1, 2), sigmas=[1.0, 0.3, 0.1, 0.03])
    with pytest.raises(UserError, match=r"another model config; choose a new output path \(-o\)$"):
        train(other, dsm_loss, _RandomCrops(8, 0), None, _config(steps=4), tmp_path / "p.pt", DOMAIN)
    with pytest.raises(UserError, match=r"not images 1×32×32 .*; choose a new output path \(-o\)$"):
        train(_tiny_model(), dsm_loss, _RandomCrops(8, 0), None, _config(steps=4), tmp_path / "p.pt",
              Domain.image((1, 32, 32)))
    result = train(other, dsm_loss, _RandomCrops(8, 0), None, _config(steps=2), tmp_path / "p.pt", DOMAIN,
                   resume=False)
    assert result["step"] == 2 and load_checkpoint(tmp_path / "p.pt")["config"]["nf"] == 6


def test_too_small_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="fewer than batch_size"):
        train(_tiny_model(), dsm_loss, _RandomCrops(3, 0), None, _config(), tmp_path / "p.pt", DOMAIN)


# --- validation ---------------------------------------------------------------------------

def _validated_steps(steps):
    return lambda step, logs: steps.append(step) if "valid_loss" in logs else None


def test_a_run_shorter_than_valid_every_validates_its_ema_weights_at_the_end(tmp_path):
    valid_set, config = _RandomCrops(8, 1), _config(steps=3, valid_every=10, checkpoint_every=10)
    validated = []
    result = train(_tiny_model(), dsm_loss, _RandomCrops(20, 0), valid_set, config, tmp_path / "p.pt", DOMAIN,
                   callback=_validated_steps(validated))
    assert validated == [3]
    assert np.isfinite(result["valid_loss"])
    assert load_checkpoint(tmp_path / "p.pt")["extra"]["valid_loss"] == result["valid_loss"]
    ema_weights = load_prior(tmp_path / "p.pt", expected_domain=DOMAIN)
    expected = validation_loss(ema_weights, dsm_loss, valid_set, config, torch.device("cpu"))
    assert result["valid_loss"] == pytest.approx(expected, rel=1e-6)


def test_validation_steps_follow_the_config_not_interruptions(tmp_path):
    train_set, valid_set = _RandomCrops(20, 0), _RandomCrops(8, 1)
    validated = []
    train(_tiny_model(), dsm_loss, train_set, valid_set, _config(steps=5, valid_every=2), tmp_path / "long.pt",
          DOMAIN, callback=_validated_steps(validated))
    assert validated == [2, 4]  # a run of valid_every steps or more is not validated again at its end

    short = _config(steps=3, valid_every=10, checkpoint_every=2)
    whole = train(_tiny_model(), dsm_loss, train_set, valid_set, short, tmp_path / "whole.pt", DOMAIN)
    with pytest.raises(_Stop):
        train(_tiny_model(), dsm_loss, train_set, valid_set, short, tmp_path / "cut.pt", DOMAIN,
              callback=_stop_at(2))
    assert np.isnan(load_checkpoint(tmp_path / "cut.pt")["extra"]["valid_loss"])
    resumed = train(_tiny_model(seed=99), dsm_loss, train_set, valid_set, short, tmp_path / "cut.pt", DOMAIN)
    assert resumed["valid_loss"] == whole["valid_loss"] and np.isfinite(whole["valid_loss"])


def test_without_a_validation_set_the_valid_loss_is_nan(tmp_path):
    result = train(_tiny_model(), dsm_loss, _RandomCrops(8, 0), None, _config(steps=2), tmp_path / "p.pt", DOMAIN)
    assert np.isnan(result["valid_loss"]) and np.isnan(load_checkpoint(tmp_path / "p.pt")["extra"]["valid_loss"])


def _write_stems(root, seconds=3.0):
    """root/{train,valid}/t0/{src0,src1,mix}.wav: two tones at 16 kHz."""
    import soundfile as sf

    t = np.arange(int(16000 * seconds)) / 16000
    stems = {f"src{i}": (0.1 * np.sin(2 * np.pi * f * t)).astype(np.float32) for i, f in enumerate((220.0, 1760.0))}
    for split in ("train", "valid"):
        track = root / split / "t0"
        track.mkdir(parents=True)
        for name, wav in {**stems, "mix": sum(stems.values())}.items():
            sf.write(track / f"{name}.wav", wav, 16000, subtype="FLOAT")
    return root


def test_short_flow_bundle_run_validates_every_member(tmp_path):
    from audiosep.priors.flows import FlowConfig
    from audiosep.training.data import MelPatches
    from audiosep.training.flow import bundle_member_path, train_flow

    data = _write_stems(tmp_path / "data")
    model = FlowConfig(conditioning="bundle", levels=2, depth=1, hidden=4, n_sigmas=2)
    config = TrainConfig(steps=2, batch_size=2, valid_batches=1, progress=False)  # valid_every 500
    result = train_flow(MelPatches(data, "src0", "audiosourcesep", valid_items=2), tmp_path / "bundle.pt",
                        arch="glow", model_config=model, config=config, finetune_steps=1)
    assert [m["step"] for m in result["members"]] == [2, 1]
    for member in result["members"]:
        assert np.isfinite(member["valid_loss"])
        stored = load_checkpoint(bundle_member_path(tmp_path / "bundle.pt", member["sigma"]))
        assert stored["extra"]["valid_loss"] == member["valid_loss"]
    assert result["valid_loss"] == result["members"][-1]["valid_loss"]
    assert load_checkpoint(tmp_path / "bundle.pt")["extra"]["valid_loss"] == result["valid_loss"]


_DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    import torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_train import DOMAIN, _RandomCrops, _config, _tiny_model
    from audiosep.priors import dsm_loss
    from audiosep.training import train
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # as train() would; kept open to report the state after it
    rank = dist.get_rank()
    model = _tiny_model(seed=rank)  # different initial weights per rank: train() must broadcast
    losses = []
    train(model, dsm_loss, _RandomCrops(16, 0), None, _config(steps=4, checkpoint_every=2),
          {out!r} + "/ddp.pt", DOMAIN, callback=lambda step, logs: losses.append(logs["loss"]))
    torch.save({{"state": model.state_dict(), "losses": losses}}, {out!r} + f"/rank{{rank}}.pt")
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tmp_path, torchrun):
    script = tmp_path / "ddp_script.py"
    script.write_text(_DDP_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path)))
    torchrun(script, done=lambda: all((tmp_path / f"rank{r}.pt").exists() for r in (0, 1)))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert _states_equal(rank0["state"], rank1["state"])
    assert rank0["losses"] != rank1["losses"]  # each rank saw its own batches and noise
    payload = load_checkpoint(tmp_path / "ddp.pt")
    assert payload["step"] == 4 and payload["extra"]["world_size"] == 2
    assert _states_equal(payload["state_dict"], rank0["state"])
    assert len(payload["extra"]["rng"]) == 2


def _score_loss(model, batch):
    """A loss without noise draws, so that two processes and one see the same numbers."""
    return model.score(batch, 0.1).square().mean()


_DDP_EQUIVALENCE_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import DOMAIN, _EpochCrops, _config, _score_loss, _tiny_model
    from audiosep.training import train
    torch.set_num_threads(1)
    train(_tiny_model(), _score_loss, _EpochCrops(16, 0), None, _config(steps=6, batch_size=2, checkpoint_every=3),
          {out!r}, DOMAIN)
""")


@pytest.mark.slow
def test_torchrun_two_processes_step_as_one_process_with_twice_the_batch(tmp_path, torchrun):
    """DDP averages the two ranks' batch-mean gradients: the mean gradient of the union of their
    batches, which is the batch one process of twice the batch draws (rank r reads every 2nd
    item from r of each epoch's permutation), so the weights after 6 steps agree."""
    script = tmp_path / "ddp_equal.py"
    script.write_text(_DDP_EQUIVALENCE_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path / "two.pt")))
    torchrun(script, done=lambda: (tmp_path / "two.pt").exists() and load_checkpoint(tmp_path / "two.pt")["step"] == 6)
    train(_tiny_model(), _score_loss, _EpochCrops(16, 0), None, _config(steps=6, batch_size=4, checkpoint_every=3),
          tmp_path / "one.pt", DOMAIN)
    two, one = load_checkpoint(tmp_path / "two.pt"), load_checkpoint(tmp_path / "one.pt")
    assert two["extra"]["world_size"] == 2 and one["extra"]["world_size"] == 1
    for name, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], value, rtol=1e-4, atol=1e-6)
    moved = [not torch.equal(value, _tiny_model().state_dict()[name]) for name, value in one["state_dict"].items()]
    assert any(moved)  # it trained


# --- interruptions and resumes ------------------------------------------------------------

def test_resume_says_so_and_refuses_another_source_or_fewer_steps(tmp_path, capsys):
    out = tmp_path / "run.pt"
    config = _config(steps=4, progress=True)
    train(_tiny_model(), dsm_loss, _RandomCrops(16, 0), None, config, out, DOMAIN, data={"source": "piano"})
    assert load_checkpoint(out)["extra"]["data"] == {"source": "piano"}
    more = dataclasses.replace(config, steps=6)
    with pytest.raises(UserError, match="trained with source 'piano', not 'violin'"):
        train(_tiny_model(), dsm_loss, _RandomCrops(16, 0), None, more, out, DOMAIN, data={"source": "violin"})
    with pytest.raises(UserError, match="already at step 4, past the 3 steps"):
        train(_tiny_model(), dsm_loss, _RandomCrops(16, 0), None, _config(steps=3), out, DOMAIN,
              data={"source": "piano"})
    capsys.readouterr()
    done = train(_tiny_model(), dsm_loss, _RandomCrops(16, 0), None, config, out, DOMAIN, data={"source": "piano"})
    assert done["step"] == 4 and np.isfinite(done["loss"])  # the stored loss, not NaN
    assert "already at step 4" in "".join(capsys.readouterr())
    train(_tiny_model(), dsm_loss, _RandomCrops(16, 0), None, more, out, DOMAIN, data={"source": "piano"})
    assert "resuming from step 4" in "".join(capsys.readouterr())


_SIGNAL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import DOMAIN, _RandomCrops, _config, _tiny_model
    from audiosep.priors import dsm_loss
    from audiosep.training import train

    def callback(step, logs):
        if step == 5:
            os.kill(os.getpid(), {signum})  # arrives in the middle of the run
    try:
        train(_tiny_model(), dsm_loss, _RandomCrops(16, 0), None, _config(steps=50, checkpoint_every=1000),
              {out!r}, DOMAIN, callback=callback)
    except KeyboardInterrupt as err:
        print(type(err).__name__)
""")


@pytest.mark.parametrize("signum", ["signal.SIGINT", "signal.SIGTERM"])
def test_an_interrupted_training_writes_its_checkpoint_first(tmp_path, signum):
    """Ctrl-C / SIGTERM end the run after the step in progress with a checkpoint of it (here
    none was due before step 1000); SIGTERM raises `Terminated` (the CLI exits 143)."""
    script = tmp_path / "script.py"
    out = tmp_path / "run.pt"
    script.write_text(_SIGNAL_SCRIPT.format(tests=os.path.dirname(__file__), out=str(out), signum=signum))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    said, raised = run.stdout.strip().splitlines()
    assert said.endswith("interrupted; checkpoint written at step 5")
    assert raised == ("Terminated" if "TERM" in signum else "KeyboardInterrupt")
    assert load_checkpoint(out)["step"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_bf16_autocast_trains_in_bfloat16_and_keeps_float32_weights(tmp_path):
    model = _tiny_model()
    dtypes = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    config = _config(steps=3, valid_every=3, precision="bf16")
    result = train(model, dsm_loss, _RandomCrops(12, 0), _RandomCrops(8, 1), config, tmp_path / "b.pt", DOMAIN)
    assert np.isfinite(result["valid_loss"])
    assert dtypes[:3] == [torch.bfloat16] * 3  # the training steps' convolutions
    assert dtypes[3:-1] and set(dtypes[3:-1]) == {torch.float32}  # validation runs in float32
    assert dtypes[-1] == torch.bfloat16  # the checkpoint's check of the updated weights, as a step runs
    payload = load_checkpoint(tmp_path / "b.pt")
    assert all(v.dtype == torch.float32 for v in payload["state_dict"].values() if v.is_floating_point())
    assert payload["extra"]["train_config"]["precision"] == "bf16"
    with pytest.raises(UserError, match="precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16")


def test_training_only_the_levels_inference_uses(tmp_path):
    from audiosep.training.ncsn import levels_loss, trained_levels

    sigmas = torch.tensor([1.0, 0.3, 0.1, 0.03])
    assert trained_levels(sigmas, 0.1).tolist() == pytest.approx([0.1, 0.03])
    with pytest.raises(UserError, match="below every level"):
        trained_levels(sigmas, 0.01)
    model, x = _tiny_model(), torch.rand(64, 1, 16, 16)
    torch.manual_seed(0)
    restricted = levels_loss(model.sigmas, 0.1)(model, x)
    torch.manual_seed(0)
    assert restricted.item() == pytest.approx(dsm_loss(model, x, torch.tensor([0.1, 0.03])).item())
    torch.manual_seed(0)
    every_level = levels_loss(model.sigmas, None)(model, x)
    torch.manual_seed(0)
    assert every_level.item() == pytest.approx(dsm_loss(model, x).item())


def test_a_diverging_run_is_a_user_error_not_a_traceback(tmp_path):
    with pytest.raises(UserError, match=r"training loss became (nan|inf) at step \d+; lower --lr"):
        train(_tiny_model(), dsm_loss, _RandomCrops(16, 0), None, _config(steps=50, lr=1e12), tmp_path / "d.pt",
              DOMAIN)


def test_the_lr_schedule_is_half_a_cosine_after_its_start_and_a_function_of_the_step():
    from audiosep.training.loop import scheduled_lr

    config = TrainConfig(lr=1e-3, lr_decay_start=100, lr_decay_steps=50, lr_final=1e-4)
    assert scheduled_lr(config, 1) == scheduled_lr(config, 100) == 1e-3
    assert scheduled_lr(config, 125) == pytest.approx(5.5e-4)  # halfway: the mean of lr and lr_final
    assert scheduled_lr(config, 150) == pytest.approx(1e-4) and scheduled_lr(config, 10_000) == pytest.approx(1e-4)
    assert scheduled_lr(TrainConfig(lr=2e-3), 10_000) == 2e-3  # no schedule: constant
    with pytest.raises(UserError, match="lr_final in"):
        TrainConfig(lr=1e-3, lr_decay_start=0, lr_final=2e-3)


def test_a_run_continued_through_its_lr_decay_equals_one_run(tmp_path):
    decay = {"lr_decay_start": 2, "lr_decay_steps": 4, "lr_final": 1e-4}
    train(_tiny_model(), dsm_loss, _EpochCrops(8, 0), None, _config(steps=8, **decay), tmp_path / "whole.pt", DOMAIN)
    train(_tiny_model(), dsm_loss, _EpochCrops(8, 0), None, _config(steps=4, **decay), tmp_path / "grown.pt", DOMAIN)
    train(_tiny_model(), dsm_loss, _EpochCrops(8, 0), None, _config(steps=8, **decay), tmp_path / "grown.pt", DOMAIN)
    a, b = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(tmp_path / "grown.pt")
    assert _states_equal(a["state_dict"], b["state_dict"])
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


# --- training log --------------------------------------------------------------------------

def test_the_training_log_has_a_row_per_checkpoint_and_validation_and_survives_a_resume(tmp_path):
    from audiosep.training.log import log_path, read_log

    train_set, valid_set = _RandomCrops(18, 0), _RandomCrops(8, 1)
    whole = train(_tiny_model(), dsm_loss, train_set, valid_set, _config(), tmp_path / "whole.pt", DOMAIN)
    rows = read_log(tmp_path / "whole.log.csv")
    assert log_path(tmp_path / "whole.pt") == tmp_path / "whole.log.csv"
    # checkpoints at 3, 6, 8; validations at 2, 4, 6, 8
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 8]
    assert [np.isnan(r["valid_loss"]) for r in rows] == [False, True, False, False, False]
    assert rows[-1]["valid_loss"] == pytest.approx(whole["valid_loss"], rel=1e-9)
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 and r["lr"] == 2e-3 for r in rows)
    assert all(b["wall_s"] >= a["wall_s"] for a, b in zip(rows, rows[1:]))

    with pytest.raises(_Stop):  # killed at step 5 after the row of step 4: the checkpoint is step 3's
        train(_tiny_model(), dsm_loss, train_set, valid_set, _config(), tmp_path / "cut.pt", DOMAIN,
              callback=_stop_at(5))
    assert [r["step"] for r in read_log(tmp_path / "cut.log.csv")] == [2, 3, 4]
    train(_tiny_model(), dsm_loss, train_set, valid_set, _config(), tmp_path / "cut.pt", DOMAIN)
    resumed = read_log(tmp_path / "cut.log.csv")
    assert [r["step"] for r in resumed] == [2, 3, 4, 6, 8]  # the row of step 4 is written again, once
    assert [r["valid_loss"] for r in resumed][2:] == pytest.approx([r["valid_loss"] for r in rows][2:])


def test_a_corrupt_training_log_is_refused_on_resume_and_by_plot(tmp_path, capsys):
    from audiosep.cli import main

    train(_tiny_model(), dsm_loss, _RandomCrops(18, 0), None, _config(steps=3), tmp_path / "p.pt", DOMAIN)
    assert main(["plot", str(tmp_path / "p.log.csv"), "-o", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "p.log.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(UserError, match="not a training log"):
        train(_tiny_model(), dsm_loss, _RandomCrops(18, 0), None, _config(steps=6), tmp_path / "p.pt", DOMAIN)
    assert (tmp_path / "p.log.csv").read_text() == "step,loss\n1,2\n"  # not replaced
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "p.log.csv"), "-o", str(tmp_path / "again.png")]) == 2
    err = capsys.readouterr().err
    assert "not a training log" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "again.png").exists()
    (tmp_path / "notes.png").write_text("my notes")
    assert main(["plot", str(tmp_path / "curves.png"), "-o", str(tmp_path / "notes.png")]) == 2  # not a PNG: kept
