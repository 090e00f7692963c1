"""tat_ext.datasets: every source on small generated data in its real on-disk format, fingerprints,
augmentation (seeded per example), the batch loader, and every bad input of the sources."""
import os
import shutil

import numpy as np
import pytest
import torch

from fake_data import CIFAR_FOLDER, file_tree as _tree, make_fake_cifar, make_image_folder, make_npz
from tat_ext import datasets
from tat_ext.datasets.augment import Pipeline, example_seed, resolve_pipeline
from tat_ext.datasets.loader import BatchPlan, batches, make_loader


# -- digits, synthetic, validation split ------------------------------------------------------------


def test_digits_fixed_stratified_split():
    data = datasets.digits()
    assert (len(data.train), len(data.test)) == (1442, 355)
    assert data.train.images.shape[1:] == (1, 8, 8) and data.train.images.dtype == torch.uint8
    counts = torch.bincount(data.test.labels, minlength=10)
    total = counts + torch.bincount(data.train.labels, minlength=10)
    assert torch.equal(counts, total // 5)  # every fifth example of each class
    again = datasets.digits()
    assert torch.equal(again.test.images, data.test.images) and torch.equal(again.train.labels, data.train.labels)
    assert again.fingerprint == data.fingerprint and data.default_augment == "none"
    x, y = data.batch(data.train, torch.arange(len(data.train)))
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-3
    assert torch.equal(y, data.train.labels)


def test_digits_file_matches_scikit_learn():
    from sklearn.datasets import load_digits

    from tat_ext.datasets.digits import digits_arrays

    pixels, target = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(pixels, bunch.data) and np.array_equal(target, bunch.target)


def test_synthetic_is_deterministic_and_learnable_labels():
    a, b = datasets.synthetic(64, 16, seed=3), datasets.synthetic(64, 16, seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.fingerprint == b.fingerprint != datasets.synthetic(64, 16, seed=4).fingerprint
    assert a.train.labels.min() >= 0 and a.train.labels.max() < 10
    assert len(torch.unique(a.train.labels)) > 3


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


# -- CIFAR-10/100 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_reads_both_layouts(tmp_path, kind):
    batches_ = make_fake_cifar(tmp_path / "data" / CIFAR_FOLDER[kind], kind=kind, seed=5)
    load = getattr(datasets, kind)
    prints = set()
    for where in (tmp_path / "data", tmp_path / "data" / CIFAR_FOLDER[kind]):  # the parent or the batch folder
        data = load(str(where))
        assert data.name == kind and data.num_classes == (10 if kind == "cifar10" else 100)
        assert data.train.images.shape == (30, 3, 32, 32) and data.test.images.shape == (6, 3, 32, 32)
        # Row-major 3072 = 3 planes of 32x32 (red, green, blue).
        assert torch.equal(data.train.images[0], torch.from_numpy(batches_[0][0][0].reshape(3, 32, 32)))
        assert data.test.labels.tolist() == batches_[-1][1]
        assert data.classes[:2] == ("class0", "class1") and data.default_augment == "crop-flip"
        assert data.source == str(tmp_path / "data" / CIFAR_FOLDER[kind])
        prints.add(data.fingerprint)
    shutil.move(str(tmp_path / "data"), str(tmp_path / "moved"))
    prints.add(load(str(tmp_path / "moved")).fingerprint)
    assert len(prints) == 1  # layout and location do not matter
    make_fake_cifar(tmp_path / "moved" / CIFAR_FOLDER[kind], n=7, kind=kind, seed=5)
    assert load(str(tmp_path / "moved")).fingerprint not in prints  # other content does


def test_cifar_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        datasets.cifar10(str(tmp_path / "nowhere"))
    make_fake_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(ValueError, match="missing in .*: data_batch_3"):
        datasets.cifar10(str(tmp_path))
    make_fake_cifar(tmp_path)
    with open(tmp_path / "test_batch", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR-10"):
        datasets.cifar10(str(tmp_path))
    make_fake_cifar(tmp_path / "c100", kind="cifar100")
    with pytest.raises(ValueError, match="missing in .*: data_batch_1"):  # CIFAR-100 files are not CIFAR-10
        datasets.cifar10(str(tmp_path / "c100"))
    with pytest.raises(ValueError, match="train is not a readable CIFAR-100"):  # no fine_labels
        make_fake_cifar(tmp_path / "c10", kind="cifar10")
        os.replace(tmp_path / "c10" / "data_batch_1", tmp_path / "c10" / "train")
        os.replace(tmp_path / "c10" / "test_batch", tmp_path / "c10" / "test")
        datasets.cifar100(str(tmp_path / "c10"))


def test_cifar_download_without_network_changes_nothing(tmp_path, monkeypatch):
    """--download through an unreachable proxy: a one-line error naming the flag; the folder the
    user named (existing or not) is left as it was, and no temporary stays behind."""
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for target in (tmp_path / "mine", tmp_path / "new"):
        with pytest.raises(ValueError, match=r"--download: could not fetch cifar10 into") as error:
            datasets.load("cifar10", str(target), download=True)
        assert "\n" not in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["mine"] and _tree(tmp_path / "mine") == {"notes.txt": b"keep me"}


def test_cifar_download_skipped_when_present(tmp_path, monkeypatch):
    make_fake_cifar(tmp_path / "cifar-10-batches-py")
    monkeypatch.setattr("tat_ext.datasets.cifar._download", lambda *a: pytest.fail("downloaded"))
    assert len(datasets.load("cifar10", str(tmp_path), download=True).train) == 30


# -- image folders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_imagefolder_reads_class_folders(tmp_path, fmt):
    written = make_image_folder(tmp_path / "pets", fmt=fmt)
    data = datasets.imagefolder(str(tmp_path / "pets"))
    assert data.classes == ("cat", "dog", "emu") and data.num_classes == 3 and data.in_channels == 3
    assert (len(data.train), len(data.test)) == (18, 9) and data.stored_size == (12, 12)
    assert data.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert data.default_augment == "inception" and data.source == str(tmp_path / "pets")
    assert data.fingerprint.startswith("27 files, sha256 ")
    for i in (0, 7, 17):
        rel = os.path.relpath(data.train.files[i], tmp_path / "pets")
        pixels = data.train.example(i)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, 12, 12)
        expected = torch.from_numpy(written[rel]).permute(2, 0, 1).int()
        if fmt == "png":  # lossless
            assert torch.equal(pixels.int(), expected)
        else:
            assert (pixels.int() - expected).abs().float().mean() < 8
    # The statistics are those of the decoded training pixels.
    every = torch.stack([data.train.example(i) for i in range(len(data.train))]).double() / 255
    assert np.allclose(data.mean, every.mean(dim=(0, 2, 3)).numpy(), atol=1e-9)
    assert np.allclose(data.std, every.std(dim=(0, 2, 3)).numpy(), rtol=1e-3)


def test_imagefolder_grey_test_folder_and_fingerprint(tmp_path):
    make_image_folder(tmp_path / "a", grey=True, eval_name="test", fmt="png")
    data = datasets.imagefolder(str(tmp_path / "a"))
    assert data.in_channels == 1 and data.train.example(0).shape == (1, 12, 12) and len(data.test) == 9
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert datasets.imagefolder(str(tmp_path / "b")).fingerprint == data.fingerprint  # moved: the same
    os.remove(tmp_path / "b" / "train" / "cat" / "img000.png")
    assert datasets.imagefolder(str(tmp_path / "b")).fingerprint != data.fingerprint


def test_imagefolder_bad_input_is_named_and_left_alone(tmp_path):
    root = tmp_path / "pets"
    with pytest.raises(ValueError, match="--data-dir: .*pets is not a directory"):
        datasets.imagefolder(str(root))
    root.mkdir()
    with pytest.raises(ValueError, match="has no train/ folder"):
        datasets.imagefolder(str(root))
    make_image_folder(root)
    shutil.rmtree(root / "val")
    with pytest.raises(ValueError, match="has neither val/ nor test/"):
        datasets.imagefolder(str(root))
    make_image_folder(root)
    (root / "train" / "fox").mkdir()
    (root / "train" / "fox" / "readme.txt").write_text("no images here")
    before = _tree(root)
    with pytest.raises(ValueError, match="Found no valid file for the classes fox"):
        datasets.imagefolder(str(root))
    shutil.rmtree(root / "train" / "fox")
    (root / "val" / "owl").mkdir()
    shutil.copy(root / "val" / "cat" / "img000.png", root / "val" / "owl" / "a.png")
    with pytest.raises(ValueError, match="classes that train/ lacks: owl"):
        datasets.imagefolder(str(root))
    shutil.rmtree(root / "val" / "owl")
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"train/dog/broken.png is not a readable image"):
        datasets.imagefolder(str(root))
    os.remove(root / "train" / "dog" / "broken.png")
    assert {k: v for k, v in _tree(root).items() if not k.startswith("train/fox")} == {
        k: v for k, v in before.items() if not k.startswith("train/fox")}
    # Damaged pixels behind a good header fail when decoded, naming the file: a training image at
    # load time (the statistics decode them), an evaluation image when the loader reaches it.
    good = (root / "train" / "emu" / "img001.png").read_bytes()
    (root / "train" / "emu" / "img001.png").write_bytes(good[:60])
    with pytest.raises(ValueError, match=r"--data-dir: .*train/emu/img001.png is not a readable image"):
        datasets.imagefolder(str(root))
    (root / "train" / "emu" / "img001.png").write_bytes(good)
    (root / "val" / "emu" / "img001.png").write_bytes(good[:60])
    data = datasets.imagefolder(str(root))
    pipeline = resolve_pipeline(data, "none", None, 0)
    plan = BatchPlan()
    plan.set([(None, torch.arange(len(data.test)))])
    with pytest.raises(ValueError, match=r"--data-dir: .*val/emu/img001.png is not a readable image"):
        list(batches(make_loader(data.test, pipeline, train=False, workers=1, device=torch.device("cpu"), plan=plan)))


def test_mixed_sizes_need_a_crop(tmp_path):
    make_image_folder(tmp_path, sizes=[(12, 12), (16, 10)])
    data = datasets.imagefolder(str(tmp_path))
    assert data.stored_size is None
    for augment in ("none", "crop-flip"):
        with pytest.raises(ValueError, match=f"--augment: imagefolder .* has images of mixed sizes.*{augment}"):
            resolve_pipeline(data, augment, None, 0)
    with pytest.raises(ValueError, match="--image-size: imagefolder .* has mixed sizes"):
        resolve_pipeline(data, None, None, 0)
    pipeline = resolve_pipeline(data, None, 10, 0)
    assert pipeline == Pipeline("inception", 10, 0)
    plan = BatchPlan()
    for train, epoch in ((True, 0), (False, None)):
        split = data.train if train else data.test
        plan.set([(epoch, torch.arange(len(split)))])
        loader = make_loader(split, pipeline, train=train, workers=0, device=torch.device("cpu"), plan=plan)
        (images, _), = batches(loader)
        assert images.shape == (len(split), 3, 10, 10) and images.dtype == torch.uint8


# -- npz ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, dtype", [("NCHW", "uint8"), ("NHWC", "uint8"), ("NHWC", "float32"),
                                           ("NCHW", "float64")])
def test_npz_layouts_and_dtypes(tmp_path, layout, dtype):
    arrays = make_npz(tmp_path / "a.npz", layout=layout, dtype=dtype)
    data = datasets.npz(str(tmp_path / "a.npz"))
    assert data.train.images.shape == (40, 3, 8, 8) and data.num_classes == 4 and data.name == "npz"
    assert np.array_equal(data.train.images.numpy(), arrays["x_train"])
    assert np.array_equal(data.test.labels.numpy(), arrays["y_test"])
    assert data.pixel_scale == (1 / 255 if dtype == "uint8" else 1.0)
    assert data.fingerprint.startswith("sha256 ") and data.source == str(tmp_path / "a.npz")
    x, _ = data.batch(data.train, torch.arange(40))
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-2


def test_npz_grey_and_class_names(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (10, 6, 6)).astype(np.uint8)
    np.savez(tmp_path / "g.npz", x_train=x, y_train=np.arange(10) % 2, x_test=x[:3], y_test=np.zeros(3, int),
             classes=np.array(["a", "b", "c"]))
    data = datasets.npz(str(tmp_path / "g.npz"))
    assert data.in_channels == 1 and data.num_classes == 3 and data.classes == ("a", "b", "c")


@pytest.mark.parametrize("override, message", [
    (dict(y_test=np.array([0] * 11 + [7])), "y_test has label 7, outside y_train's classes 0..3"),
    (dict(y_train=np.array([-1] + [0] * 39)), "y_train has a negative label"),
    (dict(y_train=np.zeros(39, int)), "y_train has 39 labels but x_train has 40 images"),
    (dict(x_test=np.zeros((12, 3, 4, 3), np.uint8)), "cannot tell NCHW from NHWC"),
    (dict(x_test=np.zeros((12, 3, 9, 9), np.uint8)), "differ in image shape or dtype"),
    (dict(x_train=np.full((40, 3, 8, 8), np.nan)), "x_train holds NaN"),
    (dict(y_train=np.zeros(40)), "y_train must be a 1-D integer array"),
    (dict(classes=np.array(["a", "b"])), "outside its 2 class names"),
])
def test_npz_bad_arrays_are_named(tmp_path, override, message):
    path = tmp_path / "bad.npz"
    make_npz(path, **override)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message) as error:
        datasets.npz(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert path.read_bytes() == before


def test_npz_missing_or_corrupt_file(tmp_path):
    with pytest.raises(ValueError, match="--data-path: .*none.npz is not a file"):
        datasets.npz(str(tmp_path / "none.npz"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="is not a readable .npz"):
        datasets.npz(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "few.npz", x_train=np.zeros((2, 1, 4, 4)))
    with pytest.raises(ValueError, match="lacks y_train, x_test, y_test"):
        datasets.npz(str(tmp_path / "few.npz"))


def test_load_by_name_checks_the_location_flags(tmp_path):
    assert datasets.load("digits").name == "digits"
    with pytest.raises(ValueError, match="--data: unknown data set"):
        datasets.load("mnist")
    with pytest.raises(ValueError, match="--data-dir: --data cifar100 needs the folder"):
        datasets.load("cifar100")
    with pytest.raises(ValueError, match="--data-path: --data npz needs the file"):
        datasets.load("npz")
    with pytest.raises(ValueError, match="--data-dir: applies to --data cifar10/cifar100/imagefolder only, not npz"):
        datasets.load("npz", str(tmp_path), data_path="x.npz")
    with pytest.raises(ValueError, match="--download: applies to --data cifar10/cifar100 only"):
        datasets.load("digits", download=True)


# -- augmentation and the loader ----------------------------------------------------------------------


def _pass(data, pipeline, items, workers=0, train=True):
    plan = BatchPlan()
    plan.set(items)
    loader = make_loader(data.train if train else data.test, pipeline, train=train, workers=workers,
                         device=torch.device("cpu"), plan=plan)
    return list(batches(loader))


def test_crop_flip_is_a_padded_crop_seeded_per_example():
    data = datasets.synthetic(24, 8, size=8, seed=1)
    pipeline = resolve_pipeline(data, "crop-flip", None, seed=7)
    assert pipeline == Pipeline("crop-flip", 8, 7)
    index = torch.arange(24)
    (a, _), = _pass(data, pipeline, [(3, index)])
    # The same examples in other batches, in another order, with worker processes: the same pixels.
    parts = _pass(data, pipeline, [(3, index[::2].flip(0)), (3, index[1::2])], workers=2)
    assert torch.equal(parts[0][0], a[::2].flip(0)) and torch.equal(parts[1][0], a[1::2])
    (other_epoch, _), = _pass(data, pipeline, [(4, index)])
    assert not torch.equal(other_epoch, a)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    _pass(data, pipeline, [(3, index)])
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    # Each output is the image zero-padded by 1 (8 // 8), cropped back to 8x8, perhaps mirrored.
    for i in range(24):
        padded = torch.nn.functional.pad(data.train.images[i], (1, 1, 1, 1))
        crops = [padded[:, r:r + 8, c:c + 8] for r in range(3) for c in range(3)]
        assert any(torch.equal(a[i], crop) or torch.equal(a[i], crop.flip(-1)) for crop in crops), i
    (plain, _), = _pass(data, pipeline, [(None, torch.arange(8))], train=False)  # evaluation: as stored
    assert torch.equal(plain, data.test.images)


def test_example_seed_mixes_every_part():
    seeds = {example_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2 ** 63 for s in seeds)


def test_validation_split_of_an_image_folder(tmp_path):
    make_image_folder(tmp_path, per_class=(5, 1))
    data = datasets.imagefolder(str(tmp_path))
    held = datasets.validation_split(data, every=5)
    assert len(held.test) == 3 and len(held.train) == 12 and held.test.files is not None
    assert set(held.train.files) | set(held.test.files) == set(data.train.files)
    assert [os.path.basename(f) for f in held.test.files] == ["img004.png"] * 3  # the fifth of each class
    every = torch.stack([held.train.example(i) for i in range(12)]).double() / 255
    assert np.allclose(held.mean, every.mean(dim=(0, 2, 3)).numpy(), atol=1e-9)
