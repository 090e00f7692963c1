"""Small data sets in the real on-disk formats, generated from a seed (nothing is downloaded)."""
import os
import pickle

import numpy as np

CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def file_tree(root):
    """Every file under ``root`` with its bytes (to show that nothing was modified)."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def _write_pickle(path, entry):
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def make_fake_cifar(root, n=6, kind="cifar10", seed=0):
    """A tiny CIFAR-10/100 batch folder at ``root`` in the official python-pickle format; returns
    [(data [n, 3072] uint8, labels)] per batch file, test last."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = 10 if kind == "cifar10" else 100
    key = b"labels" if kind == "cifar10" else b"fine_labels"
    names = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if kind == "cifar10" else ["train", "test"])
    batches = []
    for name in names:
        count = n * (5 if kind == "cifar100" and name == "train" else 1)
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, count)]
        entry = {b"data": data, key: labels, b"batch_label": name.encode()}
        if kind == "cifar100":
            entry[b"coarse_labels"] = [v // 5 for v in labels]
        _write_pickle(os.path.join(root, name), entry)
        batches.append((data, labels))
    meta_name, meta_key = ("batches.meta", b"label_names") if kind == "cifar10" else ("meta", b"fine_label_names")
    _write_pickle(os.path.join(root, meta_name), {meta_key: [f"class{i}".encode() for i in range(classes)]})
    return batches


def make_image_folder(root, classes=("cat", "dog", "emu"), per_class=(6, 3), size=(12, 12), fmt="png", seed=0,
                      grey=False, eval_name="val", sizes=None):
    """``root/train/<class>/*.<fmt>`` and ``root/<eval_name>/<class>/*.<fmt>``; returns
    {relative path: uint8 array [H, W, C]} of what was written. ``sizes``: a list to cycle through
    (mixed sizes) instead of ``size``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    k = 0
    for split, count in (("train", per_class[0]), (eval_name, per_class[1])):
        for c, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                h, w = sizes[k % len(sizes)] if sizes else size
                k += 1
                # Smooth content (JPEG keeps it nearly intact) plus a class-dependent level.
                base = np.linspace(0, 1, h * w).reshape(h, w, 1) * rng.uniform(50, 150, (1, 1, 1 if grey else 3))
                pixels = np.clip(base + 40 * c + rng.integers(0, 20, (h, w, 1 if grey else 3)), 0, 255).astype(np.uint8)
                rel = f"{split}/{name}/img{i:03d}.{fmt}"
                Image.fromarray(pixels[:, :, 0] if grey else pixels).save(os.path.join(root, rel))
                written[rel] = pixels
    return written


def make_npz(path, n_train=40, n_test=12, size=8, channels=3, num_classes=4, layout="NCHW", dtype="uint8", seed=0,
             **override):
    """An .npz with x_train, y_train, x_test, y_test (``override`` replaces or adds arrays);
    returns the NCHW arrays as written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, channels, size, size)).astype(np.uint8)
        if dtype != "uint8":
            x = x.astype(dtype) / 255
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = rng.integers(0, num_classes, n)
    nchw = dict(arrays)
    if layout == "NHWC":
        arrays = {k: v.transpose(0, 2, 3, 1) if k.startswith("x") else v for k, v in arrays.items()}
    arrays.update(override)
    np.savez(path, **arrays)
    return nchw
