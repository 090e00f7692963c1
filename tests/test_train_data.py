"""`tat-ext train` on every data source (generated in its real on-disk format): the data's name,
source and fingerprint in config.json and the header, augmentation with loader workers, the
fingerprint check on --resume, and every bad data input (one line, exit 2, the user's files
untouched). Exact resume after SIGKILL and torchrun 2 processes = 1, both with augmentation and
loader workers: test_train.py."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from fake_data import CIFAR_FOLDER, file_tree as _tree, make_fake_cifar, make_image_folder, make_npz
from tat_ext import cli
from tat_ext.train import TrainConfig, train
from test_train import _assert_bitwise_equal, _rows

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = ["--model", "vanilla_mlp", "--depth", "13", "--width", "16", "--seed", "2"]


def _config_json(out):
    with open(os.path.join(out, "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    """600 training images 3x8x8 (uint8, NHWC), 4 classes."""
    path = tmp_path_factory.mktemp("npz") / "arrays.npz"
    make_npz(path, n_train=600, n_test=64, layout="NHWC")
    return str(path)


# -- every source trains, and its files say what it trained on ------------------------------------


@pytest.mark.parametrize("source", ["png", "jpg-mixed", "cifar10", "cifar100-parent", "npz"])
def test_each_source_trains_and_is_named(tmp_path, capsys, source):
    if source in ("png", "jpg-mixed"):
        sizes = [(12, 12), (14, 10)] if source == "jpg-mixed" else None
        make_image_folder(tmp_path / "data", fmt=source[:3], sizes=sizes)
        flags = dict(data="imagefolder", data_dir=str(tmp_path / "data"), image_size=10 if sizes else None)
        expected = ("imagefolder", "27 files", "inception", 10 if sizes else 12, 3)
    elif source.startswith("cifar"):
        kind = source.split("-")[0]
        make_fake_cifar(tmp_path / "data" / CIFAR_FOLDER[kind], n=8, kind=kind)
        where = tmp_path / "data" if source.endswith("parent") else tmp_path / "data" / CIFAR_FOLDER[kind]
        flags = dict(data=kind, data_dir=str(where))
        expected = (kind, "files", "crop-flip", 32, 10 if kind == "cifar10" else 100)
    else:
        make_npz(tmp_path / "a.npz", n_train=32, dtype="float32")
        flags = dict(data="npz", data_path=str(tmp_path / "a.npz"))
        expected = ("npz", "sha256", "none", 8, 4)
    name, fingerprint, augment, size, classes = expected
    out = str(tmp_path / "run")
    result = train(TrainConfig(model="vanilla_resnet", depth=18, width=2, epochs=1, batch_size=8, out=out, **flags),
                   progress=False)
    data = _config_json(out)["resolved"]
    assert data["data"]["name"] == name and fingerprint in data["data"]["fingerprint"]
    assert data["data"]["augment"] == augment and data["image_size"] == size and data["num_classes"] == classes
    assert data["small_input"] is True and os.path.isabs(data["data"]["source"])
    header = capsys.readouterr().out
    assert f"data: {name} from {data['data']['source']} ({data['data']['fingerprint']})" in header
    assert result.model(torch.zeros(2, 3 if source != "npz" else 3, size, size)).shape == (2, classes)


def test_stem_follows_the_image_size_unless_set(tmp_path):
    make_image_folder(tmp_path / "big", per_class=(2, 1), size=(72, 72))
    base = dict(model="vanilla_resnet", depth=18, width=2, epochs=1, batch_size=6, data="imagefolder",
                data_dir=str(tmp_path / "big"))
    assert train(TrainConfig(**base), progress=False, verbose=False).resolved["small_input"] is False
    assert train(TrainConfig(**base, stem="small"), progress=False, verbose=False).resolved["small_input"] is True


def test_loader_workers_give_bitwise_the_same_run(npz_file):
    """Augmented batches do not depend on the number of loader processes."""
    base = dict(model="vanilla_mlp", depth=13, width=16, epochs=1, batch_size=64, data="npz", data_path=npz_file,
                augment="crop-flip")
    a = train(TrainConfig(**base), progress=False, verbose=False)
    b = train(TrainConfig(**base, loader_workers=2), progress=False, verbose=False)
    _assert_bitwise_equal(a.model.state_dict(), b.model.state_dict())
    c = train(TrainConfig(**{**base, "augment": "none"}), progress=False, verbose=False)
    assert a.history[0]["train_loss"] != c.history[0]["train_loss"]  # the augmentation did something


# -- the data's fingerprint on --resume -------------------------------------------------------------


def test_resume_checks_the_data_not_its_place(tmp_path, capsys):
    make_image_folder(tmp_path / "a", per_class=(4, 2))
    out = str(tmp_path / "run")
    args = MLP + ["--data", "imagefolder", "--augment", "crop-flip", "--batch-size", "6", "--schedule", "constant",
                  "--out", out]
    assert cli.main(["train", *args, "--data-dir", str(tmp_path / "a"), "--epochs", "1"]) == 0
    shutil.move(str(tmp_path / "a"), str(tmp_path / "moved"))  # the same data elsewhere: fine
    assert cli.main(["train", *args, "--data-dir", str(tmp_path / "moved"), "--epochs", "2", "--resume"]) == 0
    assert len(_rows(out)) == 2
    capsys.readouterr()
    shutil.copy(tmp_path / "moved" / "train" / "cat" / "img000.png", tmp_path / "moved" / "train" / "cat" / "new.png")
    before = _tree(out)
    assert cli.main(["train", *args, "--data-dir", str(tmp_path / "moved"), "--epochs", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume: the run in" in err and "other data" in err and "19 files" in err and err.count("\n") == 1
    assert _tree(out) == before


# -- bad input: one line, status 2, nothing the user owns modified --------------------------------


def _bad_inputs(tmp):
    """(name, flags, expected message) on data built under ``tmp``."""
    make_image_folder(tmp / "pets", per_class=(2, 1))
    os.makedirs(tmp / "empty")
    make_image_folder(tmp / "noimages", per_class=(2, 1))
    os.makedirs(tmp / "noimages" / "train" / "fox")
    make_image_folder(tmp / "corrupt", per_class=(2, 1))
    (tmp / "corrupt" / "train" / "dog" / "x.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    make_image_folder(tmp / "mixed", per_class=(2, 1), sizes=[(12, 12), (9, 9)])
    make_npz(tmp / "range.npz", y_test=np.array([9] * 12))
    make_npz(tmp / "lengths.npz", y_train=np.zeros(30, int))
    os.makedirs(tmp / "cifar")
    (tmp / "cifar" / "notes.txt").write_text("mine")
    folder = ["--data", "imagefolder", "--data-dir"]
    return [
        ("missing folder", folder + [str(tmp / "nowhere")], "nowhere is not a directory"),
        ("empty folder", folder + [str(tmp / "empty")], "has no train/ folder"),
        ("class without images", folder + [str(tmp / "noimages")], "Found no valid file for the classes fox"),
        ("corrupt image", folder + [str(tmp / "corrupt")], "train/dog/x.jpg is not a readable image"),
        ("mixed sizes without a crop", folder + [str(tmp / "mixed"), "--augment", "crop-flip"],
         "has images of mixed sizes"),
        ("mixed sizes, no image size", folder + [str(tmp / "mixed")], "--image-size: imagefolder"),
        ("image size without resize", folder + [str(tmp / "pets"), "--augment", "none", "--image-size", "8"],
         "--image-size: 8 differs from the stored 12x12"),
        ("npz labels out of range", ["--data", "npz", "--data-path", str(tmp / "range.npz")],
         "y_test has label 9, outside y_train's classes"),
        ("npz lengths", ["--data", "npz", "--data-path", str(tmp / "lengths.npz")],
         "y_train has 30 labels but x_train has 40 images"),
        ("npz missing", ["--data", "npz", "--data-path", str(tmp / "none.npz")], "--data-path: "),
        ("npz without a path", ["--data", "npz"], "--data-path: --data npz needs the file"),
        ("download without network", ["--data", "cifar10", "--data-dir", str(tmp / "cifar"), "--download"],
         "--download: could not fetch cifar10 into"),
        ("download for a folder", folder + [str(tmp / "pets"), "--download"], "--download: applies to --data cifar10"),
        ("bad worker count", ["--loader-workers", "-1"], "--loader-workers: must be >= 0"),
        ("bad image size", ["--image-size", "0"], "--image-size: must be >= 1"),
    ]


def test_bad_data_inputs(tmp_path, capsys, monkeypatch):
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # no network, whatever the machine has
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    cases = _bad_inputs(tmp_path)
    before = _tree(tmp_path)
    for name, flags, message in cases:
        out = tmp_path / "out"
        status = cli.main(["train", *MLP, "--epochs", "1", "--out", str(out), *flags])
        err = capsys.readouterr().err
        assert status == 2 and message in err, (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert not out.exists(), name
    assert _tree(tmp_path) == before
