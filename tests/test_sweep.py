"""tat-ext sweep: a tiny sweep end to end (JSON, table, figure), resume, results independent of the
worker count, the depth → plan mapping and TAT's η below 13 layers, LR selection on the validation
part, and bad input."""
import json
import os

import pytest
import torch

from tat_ext import cli
from tat_ext.models.layers import ActConv2d
from tat_ext.train.sweep_grid import depth_plan, layers_of, trelu_eta
from tat_ext.train.sweep_report import aggregate


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Depth 7 cannot reach eta = 0.9 (13 layers needed); 1e4 makes the vanilla net diverge.
TINY = ["--depths", "7,13", "--methods", "trelu,resnet", "--seeds", "1", "--lrs", "1e-3,1e4", "--epochs", "1",
        "--width", "2", "--batch-size", "256"]


def _sweep(args, capsys):
    status = cli.main(["sweep", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _state(out):
    with open(os.path.join(out, "sweep.json")) as f:
        return json.load(f)


def _results(runs):
    """A run's outcome without the wall-clock fields."""
    return {k: {f: v for f, v in r.items() if f not in ("seconds", "history")} for k, r in runs.items()}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sweep") / "out")
    assert cli.main(["sweep", *TINY, "--workers", "1", "--out", out]) == 0
    return out


def test_tiny_sweep_writes_json_table_and_figure(tiny_sweep):
    state = _state(tiny_sweep)
    runs = state["runs"]
    assert len(runs) == 2 * 2 * 2 and state["settings"]["epochs"] == 1
    assert runs["trelu/d13/lr10000/s0"]["status"] == "diverged"  # recorded, not a crash
    for key, run in runs.items():
        assert run["status"] in ("done", "diverged"), key
        if run["status"] == "done":
            assert 0.0 <= run["val_acc"] <= 1.0 and 0.0 <= run["test_acc"] <= 1.0
    # depth 7: the largest reachable eta (0.809...) rounded down; depth 13 reaches 0.9
    assert runs["trelu/d7/lr0.001/s0"]["activation"]["eta"] == 0.8
    assert runs["trelu/d13/lr0.001/s0"]["activation"]["eta"] == 0.9
    assert [runs[f"resnet/d{d}/lr0.001/s0"]["layers"] for d in (7, 13)] == [7, 13]
    with open(os.path.join(tiny_sweep, "sweep.md")) as f:
        table = f.read()
    assert "| depth (layers) | TAT (TReLU) | ResNet+BN |" in table
    assert "| 7 (7) * |" in table and "7 layers cannot reach η = 0.9: TAT uses η = 0.8" in table
    assert "(lr 1e-3, " in table and "| div |" in table  # the chosen rate; the diverged one
    assert state["invocations"][0]["command"].startswith("tat-ext sweep --depths 7,13")
    with open(os.path.join(tiny_sweep, "sweep.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_sweep_with_kfac(tmp_path, capsys):
    """--optimizer kfac (with its --kfac-* flags) reaches every run (the ResNet's BatchNorm: first-order)."""
    out = str(tmp_path / "out")
    args = ["--depths", "13", "--methods", "trelu,resnet", "--seeds", "1", "--lrs", "1e-4", "--epochs", "1",
            "--width", "2", "--batch-size", "256", "--optimizer", "kfac", "--kfac-inverse-period", "2",
            "--kfac-burnin", "1", "--workers", "1", "--out", out]
    status, _, err = _sweep(args, capsys)
    assert status == 0, err
    state = _state(out)
    assert state["settings"]["optimizer"] == "kfac" and state["settings"]["kfac_inverse_period"] == 2
    runs = state["runs"]
    assert runs["trelu/d13/lr0.0001/s0"]["status"] == "done" and runs["resnet/d13/lr0.0001/s0"]["status"] == "done"


def test_resume_reruns_only_missing_runs_with_the_same_results(tiny_sweep, tmp_path, capsys):
    out = str(tmp_path / "resumed")
    os.makedirs(out)
    state = _state(tiny_sweep)
    missing = "resnet/d13/lr0.001/s0"
    kept = {k: v for k, v in state["runs"].items() if k != missing}
    with open(os.path.join(out, "sweep.json"), "w") as f:
        json.dump({**state, "runs": kept}, f)
    status, _, _ = _sweep([*TINY, "--workers", "1", "--out", out], capsys)
    resumed = _state(out)
    assert status == 0 and resumed["invocations"][-1]["runs"] == 1
    assert {k: resumed["runs"][k] for k in kept} == kept  # untouched, wall-clock fields included
    assert _results(resumed["runs"]) == _results(state["runs"])  # the rerun run came out the same
    status, _, err = _sweep([*TINY, "--epochs", "2", "--out", out], capsys)
    assert status == 2 and "holds a sweep with other settings (epochs 1 -> 2)" in err and err.count("\n") == 1


def test_results_do_not_depend_on_the_worker_count(tiny_sweep, tmp_path, capsys):
    out = str(tmp_path / "two")
    status, stdout, _ = _sweep([*TINY, "--workers", "2", "--out", out], capsys)
    assert status == 0 and "8 runs finished" in stdout
    two = _state(out)
    assert two["invocations"][0]["workers"] == 2
    assert _results(two["runs"]) == _results(_state(tiny_sweep)["runs"])


def test_depth_maps_to_a_plan_with_that_many_nonlinear_layers():
    from tat_ext.models import vanilla_resnet

    assert {d: depth_plan(d) for d in (4, 10, 25, 50, 100, 200)} == {
        4: (1,), 10: (1, 1, 1), 25: (2, 2, 2, 2), 50: (3, 4, 6, 3), 100: (3, 4, 23, 3), 200: (3, 24, 36, 3)}
    for depth in (5, 10, 17, 25, 50, 100, 130, 200):
        blocks = depth_plan(depth)
        assert abs(layers_of(blocks) - depth) <= 1
        model = vanilla_resnet(None, 10, width=1, activation="relu", in_channels=1, small_input=True, input_size=8,
                               blocks=blocks)
        assert sum(isinstance(m, ActConv2d) for m in model.modules()) == layers_of(blocks)  # conv + ReLU each
    assert trelu_eta(10) == 0.87 and trelu_eta(12) < 0.9 <= trelu_eta(13) == 0.9
    assert trelu_eta(40, 0.95) == 0.95


def test_learning_rate_is_chosen_on_validation_not_test():
    from tat_ext.train.sweep_grid import RunSpec, SweepSettings

    settings = SweepSettings(depths=(25,), methods=("relu",), seeds=2, lrs=(1e-4, 1e-3, 1e-2))
    accs = {1e-4: (0.70, 0.99), 1e-3: (0.95, 0.90), 1e-2: (0.40, 0.98)}  # lr -> (val, test)
    records = {RunSpec("relu", 25, lr, s).key: {"status": "done", "val_acc": val + 0.01 * s, "test_acc": test,
                                                "seconds": 1.0}
               for lr, (val, test) in accs.items() for s in range(2)}
    records[RunSpec("relu", 25, 1e-2, 1).key] = {"status": "diverged", "seconds": 1.0}
    (cell,) = aggregate(settings, records)
    assert cell.chosen.lr == 1e-3 and cell.chosen.test_mean == pytest.approx(0.90)
    # trained at all: every seed above 50% validation accuracy, none diverged
    assert [r.trained_at_all for r in cell.rates] == [True, True, False] and cell.rates_trained == 2
    assert cell.rates[2].score == pytest.approx(0.20)  # the diverged seed scores 0


@pytest.mark.parametrize("args, message", [
    (["--depths", "3"], "--depths: depth must be >= 4"),
    (["--depths", "49,50"], "--depths: 49 and 50 both map to 49 nonlinear layers"),
    (["--depths", "ten"], "argument --depths"),
    (["--methods", "trelu,tanh"], "--methods: unknown 'tanh'; choose from trelu, relu, resnet"),
    (["--lrs", "1e-3,1e-3"], "--lrs: 0.001 listed more than once"),
    (["--lrs", "-1"], "argument --lrs"),
    (["--seeds", "0"], "--seeds: must be >= 1"),
    (["--workers", "0"], "--workers: must be >= 1"),
    (["--eta", "1"], "--eta: must be > 0 and < 1"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--batch-size", "2000"], "--batch-size: 2000 is larger than the training part"),
])
def test_bad_input_is_one_line_and_status_2(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    status, _, err = _sweep([*args, "--out", str(out)], capsys)
    lines = err.splitlines()
    assert status == 2 and message in lines[-1] and "Traceback" not in err, err
    assert len(lines) == 1 or message.startswith("argument"), err  # argparse prints its usage first
    assert not out.exists()


def test_out_that_is_a_file_or_foreign_json(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    status, _, err = _sweep([*TINY, "--out", str(path)], capsys)
    assert status == 2 and "exists and is not a directory" in err
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "sweep.json").write_text('{"format": "something else"}')
    status, _, err = _sweep([*TINY, "--out", str(tmp_path / "dir")], capsys)
    assert status == 2 and "sweep.json is unreadable" in err and err.count("\n") == 1
    assert (tmp_path / "dir" / "sweep.json").read_text() == '{"format": "something else"}'
