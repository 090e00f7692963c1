"""User model builders (``--model file.py:build`` / ``package.module:build``) and ``tat-ext tailor``."""
import argparse
import json
import re
import textwrap

import pytest
import torch

from tat_ext.auto.builder import build_model, is_builder_ref, load_builder, source_hash
from tat_ext.auto.command import add_arguments, main
from tat_ext.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

_SOURCE = textwrap.dedent("""
    import torch.nn.functional as F
    from torch import nn


    class Net(nn.Module):
        def __init__(self, in_channels, num_classes, depth):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(in_channels if i == 0 else 8, 8, 3, padding=1)
                                       for i in range(depth))
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            for conv in self.convs:
                x = F.relu(conv(x))
            return self.fc(x.mean(dim=(2, 3)))


    def build(num_classes=10, in_channels=3, depth=4):
        return Net(in_channels, num_classes, depth)


    def build_any(**kwargs):
        return Net(kwargs["in_channels"], kwargs.get("num_classes", 10), 2)


    def not_a_model():
        return 42
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(_SOURCE)
    return path


def test_load_from_a_file_and_a_module(model_file, monkeypatch):
    builder, ref = load_builder(f"{model_file}:build")
    assert ref.sha256 == source_hash(str(model_file)) and ref.source == str(model_file)
    model = build_model(builder, {"num_classes": 3, "in_channels": 1, "width": 99})  # width: not accepted
    assert model.fc.out_features == 3 and model.convs[0].in_channels == 1
    monkeypatch.syspath_prepend(str(model_file.parent))
    builder, ref = load_builder("mymodel:build_any")
    assert build_model(builder, {"in_channels": 2, "num_classes": 4}).fc.out_features == 4
    assert is_builder_ref("mymodel:build") and not is_builder_ref("vanilla_resnet")


@pytest.mark.parametrize("reference, match", [
    ("missing/nowhere.py:build", "no such file"),
    ("{file}:nothing", "has no callable 'nothing'"),
    ("{file}:", "expected path/to/file.py:builder"),
    ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
])
def test_bad_references(model_file, reference, match):
    with pytest.raises(ValueError, match=match) as info:
        load_builder(reference.format(file=model_file))
    assert info.value.flag == "--model"


def test_builder_must_return_a_module(model_file):
    builder, _ = load_builder(f"{model_file}:not_a_model")
    with pytest.raises(ValueError, match="returned int, not an nn.Module"):
        build_model(builder, {})


def _run(argv, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    status = main(parser.parse_args(argv))
    return status, capsys.readouterr().out


def test_tailor_command_prints_table_and_slope(model_file, capsys):
    status, out = _run(["--model", f"{model_file}:build", "--input-shape", "1,3,8,8", "--depth", "5",
                        "--eta", "0.5"], capsys)
    assert status == 0
    assert "5 nonlinear layers on the deepest path" in out
    assert "TAT leaky_relu: slope=" in out and "(eta=0.5)" in out


@pytest.mark.parametrize("argv, flag, match", [
    (["--eta", "0.95"], "--eta", "unreachable"),
    (["--input-shape", "1,3"], "--input-shape", "failed on inputs"),
    (["--model", "nowhere.py:build"], "--model", "no such file"),
    (["--rescale-shortcuts", "1.5"], "--rescale-shortcuts", "must be >= 0 and < 1"),
])
def test_tailor_command_errors_name_the_flag(model_file, argv, flag, match):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", f"{model_file}:build", "--input-shape", "1,3,8,8", "--eta", "0.5"] + argv)
    with pytest.raises(UserError, match=match) as info:
        main(args)
    assert info.value.flag == flag


def test_tailored_user_model_records_builder_and_structure(model_file):
    from tat_ext.auto.builder import check_unchanged, tailored_user_model

    model, resolved = tailored_user_model(f"{model_file}:build", {"num_classes": 3, "in_channels": 1},
                                          torch.zeros(2, 1, 8, 8), eta=0.5, activation=None)
    assert resolved["builder"]["sha256"] == source_hash(str(model_file))
    assert resolved["structure"]["depth"] == 4 and resolved["structure"]["method"] == "TAT"
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    check_unchanged(resolved["builder"])
    model_file.write_text(_SOURCE + "\n# edited\n")
    with pytest.raises(ValueError, match=r"--resume: .*mymodel.py changed since the run started"):
        check_unchanged(resolved["builder"])
    with pytest.raises(ValueError, match=r"cannot tailor a user model") as info:
        tailored_user_model(f"{model_file}:build", {}, torch.zeros(2, 3, 8, 8), eta=None, activation="relu")
    assert info.value.flag == "--activation"
    _, resolved = tailored_user_model(f"{model_file}:build", {}, torch.zeros(2, 3, 8, 8), eta=None,
                                      activation="dks-softplus")
    assert resolved["structure"]["method"] == "DKS"


# -- through tat-ext ---------------------------------------------------------------------------------
def _cli(argv, capsys):
    from tat_ext.cli import main as cli_main

    status = cli_main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_tailor(model_file, capsys):
    status, out, _ = _cli(["tailor", "--model", f"{model_file}:build", "--input-shape", "1,1,8,8", "--eta", "0.5"],
                          capsys)
    assert status == 0 and "4 nonlinear layers on the deepest path" in out
    status, _, err = _cli(["tailor", "--model", f"{model_file}:nope", "--input-shape", "1,1,8,8"], capsys)
    assert status == 2 and err.count("\n") == 1 and "argument --model:" in err


def test_cli_train_user_model_and_resume(model_file, tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--model", f"{model_file}:build", "--depth", "3", "--eta", "0.5", "--epochs", "1",
            "--batch-size", "512", "--schedule", "constant", "--out", out]
    status, _, err = _cli(argv, capsys)
    assert status == 0, err
    with open(f"{out}/config.json") as handle:
        saved = json.load(handle)
    resolved = saved["resolved"]
    assert saved["config"]["model"] == f"{model_file}:build" and saved["config"]["depth"] == 3
    assert resolved["builder"]["sha256"] == source_hash(str(model_file))
    assert resolved["builder_kwargs"] == {"num_classes": 10, "in_channels": 1, "depth": 3}
    assert resolved["structure"]["depth"] == 3 and resolved["activation"]["name"] == "trelu"
    resume = [a if a != "1" else "2" for a in argv] + ["--resume"]  # one epoch more
    status, _, err = _cli(resume, capsys)
    assert status == 0, err
    model_file.write_text(_SOURCE + "\n# edited\n")
    status, _, err = _cli([a if a != "2" else "3" for a in resume], capsys)
    assert status == 2 and "argument --model: --resume:" in err and "changed since the run started" in err


@pytest.mark.parametrize("argv, match", [
    (["--model", "nowhere/net.py:build"], "argument --model: no such file"),
    (["--model", "{file}:build", "--activation", "relu"], "argument --activation:"),
    (["--model", "{file}:not_a_model"], "argument --model: .*returned int, not an nn.Module"),
])
def test_cli_train_bad_user_model(model_file, capsys, argv, match):
    status, _, err = _cli(["train"] + [a.format(file=model_file) for a in argv] + ["--epochs", "1"], capsys)
    assert status == 2 and re.search(match, err) and err.count("\n") == 1
