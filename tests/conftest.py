"""Shared test settings."""
import os
import random
import subprocess
import sys

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


# What torch's gloo backend sometimes prints when one process of a finished torchrun run aborts
# on its way out (rare: once in 122 two-process runs on a 2-core machine, never mid-run): the run's work
# is done and its outputs are complete, so only the exit status is wrong.
GLOO_EXIT_ABORT = "terminate called without an active exception"


@pytest.fixture
def torchrun():
    """`torchrun(script, done)`: run `script` on two processes (torchrun --standalone, gloo, one
    thread each) and fail unless it exits 0. An abort at exit (`GLOO_EXIT_ABORT`, SIGABRT) is
    accepted only when `done()` says the outputs the test checks are all there and complete,
    since the test then checks the same numbers as after a clean exit."""
    def run(script, done):
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        aborted_at_exit = GLOO_EXIT_ABORT in result.stderr and "SIGABRT" in result.stderr and done()
        assert result.returncode == 0 or aborted_at_exit, result.stderr[-3000:]
    return run
