"""Image data: IDX and CIFAR-10 readers on generated files, the digits fallback, dataset
specs, reproducible mixtures; BASIS on image-shaped Gaussian priors; image scores."""
import gzip
import hashlib
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from audiosep.data.images import (
    batch_mixtures,
    digits,
    image_mixtures,
    load_images,
    mixture_indices,
    read_cifar10,
    read_idx,
    read_mnist,
)
from audiosep.errors import UserError
from audiosep.eval.metrics import best_permutation, image_separation_scores, psnr
from audiosep.separation.basis import BasisConfig, basis_separate
from audiosep.separation.mixing import LinearMixing

# a real MNIST copy, when the run names one (AUDIOSEP_MNIST=DIR pytest ...): the project never assumes a path
MNIST = Path(os.environ.get("AUDIOSEP_MNIST", "")) if os.environ.get("AUDIOSEP_MNIST") else None


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_mnist(folder: Path, n_train=12, n_test=6, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for stem, array, dims in ((f"{prefix}-images-idx3-ubyte", images, 3), (f"{prefix}-labels-idx1-ubyte", labels, 1)):
            data = _idx_bytes(array, 0x08)
            (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reader_reads_generated_idx_files(tmp_path, gz):
    written = _write_mnist(tmp_path / "m", gz=gz)
    for split in ("train", "test"):
        images, labels = read_mnist(tmp_path / "m", split)
        np.testing.assert_array_equal(images, written[split][0])
        np.testing.assert_array_equal(labels, written[split][1])
    loaded = load_images(tmp_path / "m", "test")  # a bare folder is recognised as MNIST
    assert loaded.name == "mnist" and loaded.images.shape == (6, 1, 28, 28) and loaded.images.dtype == torch.float32
    np.testing.assert_allclose(loaded.images[:, 0].numpy() * 255, written["test"][0], atol=1e-4)


@pytest.mark.parametrize("dtype, code", [(np.int16, 0x0B), (np.float32, 0x0D), (np.float64, 0x0E)])
def test_idx_reader_reads_every_big_endian_type(tmp_path, dtype, code):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    (tmp_path / "x.idx").write_bytes(_idx_bytes(array, code))
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), array)


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01\x08\x01\x00\x00\x00\x02ab", "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x02ab", "not an IDX file"),
    (b"\x00\x00\x08\x03\x00\x00", "ends first"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "announces shape (5,)"),
    (b"", "not an IDX file"),
    (b"\x1f\x8bnot gzip", "broken gzip"),
])
def test_bad_idx_files_are_one_line_user_errors(tmp_path, content, message):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        read_idx(tmp_path / "bad")
    assert "\n" not in str(err.value)


def test_missing_mnist_files_and_bad_specs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no t10k-images-idx3-ubyte"):
        read_mnist(tmp_path, "test")
    with pytest.raises(UserError, match="neither MNIST IDX files nor CIFAR-10"):
        load_images(tmp_path)
    with pytest.raises(UserError, match="unknown image dataset 'svhn'"):
        load_images(f"svhn:{tmp_path}")
    with pytest.raises(UserError, match="unknown image split"):
        load_images("digits", "valid")
    with pytest.raises(UserError, match="not a folder"):
        load_images(tmp_path / "nowhere")


@pytest.mark.skipif(MNIST is None or not MNIST.is_dir(), reason="no MNIST copy named (AUDIOSEP_MNIST=DIR)")
def test_a_real_mnist_copy_is_the_standard_set():
    raw = gzip.decompress((MNIST / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    images, labels = read_mnist(MNIST, "test")
    assert images.shape == (10000, 28, 28) and labels[:5].tolist() == [7, 2, 1, 0, 4]


def _write_cifar(folder: Path, per_batch=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f)
        batches[name] = (data, labels)
    return batches


def test_cifar10_reader_reads_generated_pickles(tmp_path):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py")
    images, labels = read_cifar10(tmp_path, "train")  # the parent folder is accepted too
    assert images.shape == (20, 3, 32, 32) and labels.shape == (20,)
    np.testing.assert_array_equal(images[4:8].reshape(4, -1), batches["data_batch_2"][0])
    test = load_images(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", "test")
    assert test.images.shape == (4, 3, 32, 32) and test.labels.tolist() == batches["test_batch"][1]
    # channel-first layout: the first 1024 bytes of a row are the red plane
    np.testing.assert_allclose(test.images[0, 0].flatten().numpy() * 255, batches["test_batch"][0][0, :1024], atol=1e-4)


class _Evil:
    def __reduce__(self):
        return (print, ("ran code",))


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(UserError, match="not a CIFAR-10 python batch.*refusing to load builtins.print"):
        read_cifar10(folder, "test")


def test_digits_fallback_splits_without_overlap():
    train, train_labels = digits("train")
    test, _ = digits("test")
    assert train.shape == (1497, 8, 8) and test.shape == (300, 8, 8) and train.dtype == np.uint8
    assert train.max() == 255 and len(train_labels) == 1497
    rows = {t.tobytes() for t in test}
    assert sum(t.tobytes() in rows for t in train) < 20  # a few digits repeat exactly in the set itself


def test_mixtures_are_reproducible_by_seed_and_mix_distinct_images():
    images = torch.rand(50, 1, 4, 4)
    m1, s1 = image_mixtures(images, 200, 3, seed=7)
    m2, s2 = image_mixtures(images, 200, 3, seed=7)
    assert torch.equal(m1, m2) and torch.equal(s1, s2)
    assert not torch.equal(image_mixtures(images, 200, 3, seed=8)[0], m1)
    index = mixture_indices(50, 200, 3, seed=7)
    assert all(len(set(row.tolist())) == 3 for row in index)
    assert torch.equal(s1, images[index])
    assert torch.equal(m1, s1.sum(dim=1))
    mean, centred = image_mixtures(images, 200, 3, seed=7, mixing="mean", center=True)
    assert torch.allclose(centred, s1 - 0.5) and torch.allclose(mean, (s1 - 0.5).mean(dim=1))
    with pytest.raises(UserError, match="need at least 3 images"):
        mixture_indices(2, 1, 3, 0)


def test_batch_mixtures_average_image_i_with_image_i_plus_half():
    batch = torch.arange(8.0).view(8, 1, 1, 1)
    assert batch_mixtures(batch, 2).flatten().tolist() == [2.0, 3.0, 4.0, 5.0]
    with pytest.raises(UserError, match="does not split"):
        batch_mixtures(batch[:7], 2)


def test_basis_with_two_gaussian_image_priors_recovers_the_posterior_mean():
    from test_basis import GaussianPrior

    gen = torch.Generator().manual_seed(3)
    shape = (1, 3, 3)
    mu1, mu2 = 0.3 + 0.3 * torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    s1, s2 = 0.15 + 0.15 * torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    x1 = mu1 + s1 * torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    x2 = mu2 + s2 * torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    m = x1 + x2
    chains = 400
    est = basis_separate([GaussianPrior(mu1, s1), GaussianPrior(mu2, s2)], m, LinearMixing([1, 1]),
                         BasisConfig(n_chains=chains, clamp=None, delta=3e-5), progress=False)
    mean = mu1 + s1**2 / (s1**2 + s2**2) * (m - mu1 - mu2)
    se = s1 * s2 / (s1**2 + s2**2).sqrt() / math.sqrt(chains)
    z = (est[0] - mean) / se  # ≈ N(0, 1) per pixel (see test_basis)
    assert est.shape == (2, 3, *shape)
    assert z.pow(2).mean().sqrt() < 1.5 and z.abs().max() < 4.5


def test_best_permutation_picks_the_best_j_of_k_estimates():
    refs = np.stack([np.zeros((2, 2)), np.ones((2, 2))])
    ests = np.stack([np.full((2, 2), 0.9), np.full((2, 2), 5.0), np.full((2, 2), 0.1)])
    perm, matched = best_permutation(refs, ests, lambda r, e: psnr(r, e))
    assert perm.tolist() == [2, 0]
    np.testing.assert_array_equal(matched, ests[[2, 0]])
    with pytest.raises(ValueError, match="only 1 estimates"):
        best_permutation(refs, ests[:1], lambda r, e: psnr(r, e))


def test_image_scores_use_the_best_assignment_per_mixture():
    rng = np.random.default_rng(0)
    refs = rng.random((3, 2, 1, 12, 12))
    noisy = refs + 0.01 * rng.standard_normal(refs.shape)
    swapped = noisy[:, ::-1]
    extra = np.concatenate([np.zeros((3, 1, 1, 12, 12)), swapped], axis=1)  # K = 3 outputs, one useless
    direct = image_separation_scores(refs, noisy)
    for est in (swapped, extra):
        scores = image_separation_scores(refs, est)
        np.testing.assert_allclose(scores["psnr"], direct["psnr"])
        np.testing.assert_allclose(scores["ssim"], direct["ssim"])
    assert np.all(np.abs(direct["psnr"] - 40.0) < 1.0)  # MSE 1e-4
    assert np.all(direct["ssim"] > 0.9)
