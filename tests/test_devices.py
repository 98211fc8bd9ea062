"""`--device` parsing: training and separation resolve a device string the same way, a bare
"cuda" gets an index before `torch.cuda.set_device`, and bad strings are UserErrors.
No GPU needed: CUDA is faked with monkeypatch."""
import inspect

import pytest
import torch

import audiosep.training.loop as train_module
from audiosep.devices import resolve_device
from audiosep.errors import UserError
from audiosep.separation.separator import Separator


class _Identity:
    """The smallest Separator method."""

    sources = ("a",)
    sample_rate = 8000

    def __call__(self, mix):
        return mix[None]


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two visible CUDA devices, cuda:1 current; the devices given to set_device are recorded."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    return calls


@pytest.fixture
def train_device(monkeypatch):
    """`train_device(device)`: the device `audiosep.training.train` runs on (the loop itself is stubbed)."""
    run_parameters = inspect.signature(train_module._run)

    def fake_run(*args, **kwargs):
        return run_parameters.bind(*args, **kwargs).arguments["device"]

    monkeypatch.setattr(train_module, "_run", fake_run)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def run(device):
        return train_module.train(None, None, None, None, None, "unused.pt", None, device=device)

    return run


def _separate_device(device):
    return Separator(_Identity(), device=device, progress=False).device


@pytest.mark.parametrize("device, expected", [
    ("cpu", torch.device("cpu")),
    ("cuda", torch.device("cuda", 1)),  # the current device
    ("cuda:1", torch.device("cuda", 1)),
    ("cuda:0", torch.device("cuda", 0)),
    (torch.device("cuda"), torch.device("cuda", 1)),
])
def test_train_and_separate_resolve_devices_alike(fake_cuda, train_device, device, expected):
    assert train_device(device) == expected
    assert _separate_device(device) == expected
    assert resolve_device(device) == expected
    if expected.type == "cuda":
        assert fake_cuda == [expected] * 3  # set_device only ever sees an indexed device
    else:
        assert fake_cuda == []


def test_bare_cuda_under_torchrun_is_the_local_rank(fake_cuda, train_device, monkeypatch):
    monkeypatch.setattr(train_module, "_init_distributed", lambda device: (0, 2, False))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert train_device("cuda") == torch.device("cuda", 0)  # not the current device, cuda:1
    assert train_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins
    assert fake_cuda == [torch.device("cuda", 0), torch.device("cuda", 1)]


@pytest.mark.parametrize("device, message", [
    ("gpu", "unknown device 'gpu'"),
    ("cuda:x", "unknown device 'cuda:x'"),
    ("CUDA", "unknown device 'CUDA'"),
    ("meta", "unknown device 'meta'"),
    ("cuda:2", "requested but this process sees 2 CUDA device(s)"),
])
def test_bad_devices_are_user_errors_everywhere(fake_cuda, train_device, device, message):
    for resolve in (train_device, _separate_device, resolve_device):
        with pytest.raises(UserError) as excinfo:
            resolve(device)
        assert message in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert fake_cuda == []


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_a_user_error(monkeypatch, train_device, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: pytest.fail("set_device without CUDA"))
    for resolve in (train_device, _separate_device, resolve_device):
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve(device)


def test_a_bad_device_trains_nothing(tmp_path):
    from test_train import DOMAIN, _config, _RandomCrops, _tiny_model

    from audiosep.priors import dsm_loss

    with pytest.raises(UserError, match="unknown device 'gpu'"):
        train_module.train(_tiny_model(), dsm_loss, _RandomCrops(8, 0), None, _config(steps=2),
                           tmp_path / "p.pt", DOMAIN, device="gpu")
    assert not (tmp_path / "p.pt").exists()
