"""Shared test settings."""
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: one thread avoids OpenMP overhead on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same torch, NumPy and `random` states, so a test that draws
    unseeded inputs gets the same ones whether it runs alone or after others, in any order."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def device(request):
    """The device of a tensor test: every test that takes it runs on the CPU always and on a GPU
    when there is one (one test body for both, torchaudio's cpu/cuda test split)."""
    return torch.device(request.param)
