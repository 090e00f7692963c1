"""tat_ext.datasets: the embedded digits split, CIFAR-10 from a local pickle directory, synthetic data."""
import os
import pickle

import numpy as np
import pytest
import torch

from tat_ext import datasets


def test_digits_fixed_stratified_split():
    data = datasets.digits()
    assert (len(data.train), len(data.test)) == (1442, 355)
    assert data.train.images.shape[1:] == (1, 8, 8) and data.train.images.dtype == torch.uint8
    counts = torch.bincount(data.test.labels, minlength=10)
    total = counts + torch.bincount(data.train.labels, minlength=10)
    assert torch.equal(counts, total // 5)  # every fifth example of each class
    again = datasets.digits()
    assert torch.equal(again.test.images, data.test.images) and torch.equal(again.train.labels, data.train.labels)
    x, y = data.batch(data.train, torch.arange(len(data.train)))
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-3
    assert torch.equal(y, data.train.labels)


def test_digits_file_matches_scikit_learn():
    from sklearn.datasets import load_digits

    pixels, target = datasets._digits_arrays()
    bunch = load_digits()
    assert np.array_equal(pixels, bunch.data) and np.array_equal(target, bunch.target)


def _write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
    with open(path, "wb") as f:
        pickle.dump(entry, f)
    return entry


def make_fake_cifar(root, n=6):
    """A tiny CIFAR-10 directory in the official python-pickle layout."""
    os.makedirs(root, exist_ok=True)
    entries = [_write_batch(os.path.join(root, f"data_batch_{i}"), n, i) for i in range(1, 6)]
    entries.append(_write_batch(os.path.join(root, "test_batch"), n, 9))
    return entries


def test_cifar10_reads_the_pickle_format(tmp_path):
    entries = make_fake_cifar(tmp_path / "cifar-10-batches-py")
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the archive's folder or its parent
        data = datasets.cifar10(str(where))
        assert data.train.images.shape == (30, 3, 32, 32) and data.test.images.shape == (6, 3, 32, 32)
        # Row-major 3072 = 3 planes of 32x32 (red, green, blue).
        first = torch.from_numpy(entries[0][b"data"][0].reshape(3, 32, 32))
        assert torch.equal(data.train.images[0], first)
        assert data.test.labels.tolist() == [int(v) for v in entries[-1][b"labels"]]


def test_cifar10_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        datasets.cifar10(str(tmp_path / "nowhere"))
    make_fake_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(ValueError, match="missing in .*: data_batch_3"):
        datasets.cifar10(str(tmp_path))
    _write_batch(tmp_path / "data_batch_3", 4, 3)
    with open(tmp_path / "test_batch", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR-10"):
        datasets.cifar10(str(tmp_path))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 batch"):
        datasets.cifar10(str(tmp_path))


def test_synthetic_is_deterministic_and_learnable_labels():
    a, b = datasets.synthetic(64, 16, seed=3), datasets.synthetic(64, 16, seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.labels.min() >= 0 and a.train.labels.max() < 10
    assert len(torch.unique(a.train.labels)) > 3


def test_load_by_name():
    assert datasets.load("digits").name == "digits"
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("mnist")
    with pytest.raises(ValueError, match="cifar10 needs a data dir"):
        datasets.load("cifar10")


def test_validation_split_holds_out_part_of_train_only():
    data = datasets.digits()
    held = datasets.validation_split(data, every=5)
    assert torch.equal(held.train.labels.bincount(minlength=10) + held.test.labels.bincount(minlength=10),
                       data.train.labels.bincount(minlength=10))
    assert torch.equal(held.test.labels.bincount(minlength=10), data.train.labels.bincount(minlength=10) // 5)
    rows = lambda split: {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(split.images, split.labels)}
    assert rows(held.train) | rows(held.test) == rows(data.train) and not rows(held.test) & rows(data.test)
    x, _ = held.batch(held.train, torch.arange(len(held.train)))  # standardized with the rest's statistics
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-3 and held.mean != data.mean
    with pytest.raises(ValueError, match="every must be an int >= 2"):
        datasets.validation_split(data, every=1)
