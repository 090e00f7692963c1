"""tat_ext.train: run files, exact resume (also after SIGKILL/SIGINT in a subprocess), torchrun with
2 CPU processes vs 1, the execution flags, and every bad input of `tat-ext train`."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tat_ext import cli
from tat_ext.train import TrainConfig, train
from tat_ext.train.checkpoint import FORMAT
from tat_ext.utils.files import atomic_write
from tat_ext.train.metrics import METRIC_KEYS

pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small vanilla TAT MLP on the digits: 13 nonlinear layers is the least that reaches eta = 0.9.
TINY = ["--model", "vanilla_mlp", "--depth", "13", "--width", "16", "--seed", "3"]
# Many short steps, so that a kill lands mid-epoch; augmented in loader worker processes, which
# must not change the exactness of a resume.
LONG = TINY + ["--batch-size", "32", "--epochs", "3", "--lr", "3e-4", "--augment", "crop-flip", "--loader-workers", "1"]


def _env():
    # One thread: bitwise equality needs the same reduction order in every process.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def _cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "tat_ext", "train", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _model_state(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


# -- files of a run ---------------------------------------------------------------------------------


def test_train_writes_well_formed_run_files(tmp_path, capsys):
    out = str(tmp_path / "run")
    result = train(TrainConfig(model="vanilla_mlp", depth=13, width=16, epochs=2, out=out), progress=False)
    assert result.test_acc is not None and 0.0 <= result.test_acc <= 1.0
    assert "final test accuracy" in capsys.readouterr().out
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2] and all(set(METRIC_KEYS) <= set(r) for r in rows)
    assert rows == result.history
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    act = config["resolved"]["activation"]
    assert config["config"]["depth"] == 13 and config["config"]["lr"] == 3e-4
    assert act["slope"] == result.model.activation.slope and act["scale"] == result.model.activation.scale
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["epoch"] == 2 and ckpt["batch"] == 0
    assert {"torch", "numpy", "python", "data_order"} <= set(ckpt["rng"])
    _assert_bitwise_equal(ckpt["model"], result.model.state_dict())
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_resume_in_process_is_bitwise_for_a_conv_net(tmp_path):
    """Resume at an epoch boundary (a constant schedule may be extended) with the fused convs."""
    base = TrainConfig(model="vanilla_resnet", depth=18, width=2, schedule="constant", batch_size=128, seed=1)
    whole = train(TrainConfig(**{**base.as_dict(), "epochs": 2}), progress=False, verbose=False)
    out = str(tmp_path / "run")
    train(TrainConfig(**{**base.as_dict(), "epochs": 1, "out": out}), progress=False, verbose=False)
    resumed = train(TrainConfig(**{**base.as_dict(), "epochs": 2, "out": out, "resume": True}),
                    progress=False, verbose=False)
    _assert_bitwise_equal(resumed.model.state_dict(), whole.model.state_dict())
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]


# -- crashes and interrupts (subprocesses) --------------------------------------------------------


def _start_mid_epoch_wait(out, proc, fraction=0.5):
    """Wait until epoch 1 is complete and written (curves.png is the last file), then `fraction`
    of an epoch more: the next signal lands in the middle of epoch 2 (unless the machine's speed
    changed a lot since epoch 1; the callers check)."""
    _wait_for(os.path.join(out, "curves.png"), proc)
    time.sleep(fraction * _rows(out)[0]["seconds"])


def _start_and_kill(args, whole, killed):
    """Start the uninterrupted run (returned) and a second one, SIGKILLed in the middle of epoch 2."""
    reference = _cli(args + ["--out", whole])
    proc = _cli(args + ["--out", killed])
    _start_mid_epoch_wait(killed, proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return reference


def test_resume_after_sigkill_or_ctrl_c_is_bitwise(tmp_path):
    """An uninterrupted run; one killed with SIGKILL mid-epoch; one stopped with Ctrl-C mid-epoch
    (all with augmentation in a loader worker). Both interrupted runs, resumed, end with bitwise
    the uninterrupted weights."""
    whole, killed, stopped = (str(tmp_path / n) for n in ("whole", "killed", "stopped"))
    reference = _start_and_kill(LONG, whole, killed)
    # A temporary left by a write cut short must neither be read nor stay behind.
    with open(os.path.join(killed, ".checkpoint.pt.tmp-99999"), "wb") as f:
        f.write(b"half a checkpoint")
    resumed = [_cli(LONG + ["--out", killed, "--resume"])]

    # Ctrl-C mid-epoch: epoch 1 (the timing reference) can be slower than epoch 2 (warm-up, a
    # busy machine), so a signal may land after epoch 2; then try again, earlier.
    for fraction in (0.5, 0.2, 0.05):
        shutil.rmtree(stopped, ignore_errors=True)
        proc = _cli(LONG + ["--out", stopped])
        _start_mid_epoch_wait(stopped, proc, fraction)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "interrupted at epoch" in err and "Traceback" not in err, err[-300:]
        ckpt = torch.load(os.path.join(stopped, "checkpoint.pt"), weights_only=True)
        if ckpt["batch"] > 0:
            break
    assert ckpt["epoch"] < 3 and 0 < ckpt["batch"] < 45, (ckpt["epoch"], ckpt["batch"])  # saved mid-epoch
    resumed.append(_cli(LONG + ["--out", stopped, "--resume"]))

    for proc in [reference] + resumed:
        assert proc.wait(timeout=300) == 0, proc.communicate()
    for out in (killed, stopped):
        _assert_bitwise_equal(_model_state(out), _model_state(whole))
        assert [r["train_loss"] for r in _rows(out)] == [r["train_loss"] for r in _rows(whole)]
        assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_kfac_resume_after_sigkill_is_bitwise(tmp_path):
    """K-FAC's factors, inverses, momentum and step count are in the checkpoint: a run killed
    mid-epoch and resumed ends with bitwise the uninterrupted weights."""
    args = TINY + ["--batch-size", "32", "--epochs", "2"] + KFAC + ["--kfac-curvature-period", "2"]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    reference = _start_and_kill(args, whole, killed)
    resumed = _cli(args + ["--out", killed, "--resume"])
    for p in (reference, resumed):
        assert p.wait(timeout=300) == 0, p.communicate()
    assert 0 < torch.load(os.path.join(killed, "checkpoint.pt"), weights_only=True)["optimizer"]["kfac"]["steps"]
    _assert_bitwise_equal(_model_state(killed), _model_state(whole))
    assert [r["train_loss"] for r in _rows(killed)] == [r["train_loss"] for r in _rows(whole)]


def test_kfac_trains_a_vanilla_tat_net_on_the_digits():
    """The CI-sized version of bench/results/kfac_depth.md: 3 epochs of a 13-layer TAT MLP."""
    config = TrainConfig(model="vanilla_mlp", depth=13, width=32, epochs=3, batch_size=64, optimizer="kfac",
                         lr=1e-3, kfac_ema=0.9, kfac_inverse_period=5)
    result = train(config, progress=False, verbose=False)
    assert result.config.warmup_epochs == 1  # kfac's default
    assert result.test_acc > 0.5             # chance: 0.1


SOAP = ["--optimizer", "soap", "--lr", "3e-3"]


def test_soap_trains_and_resumes_bitwise(tmp_path):
    """--optimizer soap (heavyball.SOAP): above chance in 3 epochs, and its state is in the
    checkpoint, so a run killed mid-epoch and resumed ends with bitwise the uninterrupted weights."""
    pytest.importorskip("heavyball")  # in requirements.txt; optional for the package itself
    config = TrainConfig(model="vanilla_mlp", depth=13, width=32, epochs=3, batch_size=64, optimizer="soap", lr=3e-3)
    assert train(config, progress=False, verbose=False).test_acc > 0.5  # chance: 0.1
    args = TINY + ["--batch-size", "32", "--epochs", "2"] + SOAP
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    reference = _start_and_kill(args, whole, killed)
    resumed = _cli(args + ["--out", killed, "--resume"])
    for p in (reference, resumed):
        assert p.wait(timeout=300) == 0, p.communicate()
    _assert_bitwise_equal(_model_state(killed), _model_state(whole))
    assert [r["train_loss"] for r in _rows(killed)] == [r["train_loss"] for r in _rows(whole)]


def test_soap_without_heavyball_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "heavyball", None)  # import fails as if not installed
    assert cli.main(["train", *TINY, "--optimizer", "soap", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--optimizer" in err and "heavyball" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_atomic_write_survives_sigkill_mid_write(tmp_path):
    """A process killed while writing leaves the previous file intact."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the last good checkpoint")
    code = ("import os, signal, sys\n"
            "from tat_ext.utils.files import atomic_write\n"
            "def write(f):\n"
            "    f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"atomic_write({str(path)!r}, write)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"the last good checkpoint"
    strays = [n for n in os.listdir(tmp_path) if n != "checkpoint.pt"]
    assert len(strays) == 1 and strays[0].startswith(".checkpoint.pt.tmp-")  # the killed writer's

    def failing(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(str(path), failing)
    assert path.read_bytes() == b"the last good checkpoint"
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint.pt"] + strays)  # the failed writer's is gone


# -- torchrun ---------------------------------------------------------------------------------------


# K-FAC with short curvature memory and frequent inverses (a few dozen steps), and the MC Fisher.
KFAC = ["--optimizer", "kfac", "--lr", "1e-3", "--kfac-ema", "0.9", "--kfac-inverse-period", "5"]


@pytest.mark.parametrize("optimizer", [[], KFAC], ids=["adam", "kfac"])
def test_torchrun_two_cpu_processes_match_one(tmp_path, optimizer):
    """Also with augmentation in loader worker processes (each example's randomness is its own).
    With K-FAC the factors are all-reduced and the MC labels keyed to the global example index."""
    args = TINY + ["--batch-size", "32", "--epochs", "2", "--device", "cpu", "--augment", "crop-flip",
                   "--loader-workers", "1"] + optimizer
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    proc = _cli(args + ["--out", one])
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "tat_ext", "train", *args, "--out", two], cwd=ROOT, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.wait(timeout=300) == 0, proc.communicate()
    out, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, err
    assert out.count("final test accuracy") == 1  # only rank 0 prints
    with open(os.path.join(two, "config.json")) as f:
        resolved = json.load(f)["resolved"]
    assert resolved["world_size"] == 2 and resolved["data"]["augment"] == "crop-flip"
    for a, b in zip(_rows(one), _rows(two)):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    a, b = _model_state(one), _model_state(two)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


# Rank 1 is killed with SIGKILL (as the kernel's out-of-memory killer does) at its third collective,
# the third training step's stop check: rank 0 is then waiting for it there.
_KILL_RANK_1 = """
import os, signal, sys
import torch.distributed as dist
from tat_ext import cli

if os.environ["RANK"] == "1":
    real, calls = dist.all_reduce, []

    def all_reduce(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    dist.all_reduce = all_reduce
sys.exit(cli.main(sys.argv[1:]))
"""


def test_torchrun_worker_killed_mid_run_is_reported_in_one_line(tmp_path):
    script = tmp_path / "kill_rank_1.py"
    script.write_text(_KILL_RANK_1)
    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), "train", *TINY, "--batch-size", "32", "--epochs", "1", "--device", "cpu",
                           "--out", out], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode != 0, err
    lines = [line for line in err.splitlines() if line.startswith("tat-ext train: ")]
    assert len(lines) == 1, err
    assert "process 0 of 2 lost contact with another process of this torchrun run" in lines[0], err
    assert "by peer" in lines[0] and "--resume" in lines[0], err  # "closed by" or "reset by"
    assert "[rank0]: Traceback" not in err, err  # the survivor's one line, not its traceback
    root_cause = err[err.index("Root Cause"):]  # torchrun's report names the process and the signal
    assert "rank      : 1" in root_cause and "SIGKILL" in root_cause, err
    assert sorted(os.listdir(out)) == ["config.json"]  # nothing partial


# -- execution flags --------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [dict(amp=True), dict(channels_last=True), dict(model="resnet"),
                                   dict(shortcut_weight=0.5, activation="tat-softplus"),
                                   dict(blocks=(1, 1, 1, 1), depth=14, activation="relu")])
def test_flags_and_families_train(flags):
    config = TrainConfig(**{"model": "vanilla_resnet", "depth": 18, "width": 2, "epochs": 1, "batch_size": 256,
                            **flags})
    result = train(config, progress=False, verbose=False)
    assert 0.0 <= result.test_acc <= 1.0 and all(torch.isfinite(p).all() for p in result.model.parameters())


def test_compile_smoke():
    config = TrainConfig(model="vanilla_mlp", depth=13, width=8, epochs=1, batch_size=512, compile=True)
    result = train(config, progress=False, verbose=False)
    assert 0.0 <= result.test_acc <= 1.0


# -- bad input: one line on stderr, status 2, nothing on disk lost ----------------------------------


def _run_main(args, capsys):
    status = cli.main(["train", *args])
    err = capsys.readouterr().err
    return status, err


def _snapshot(directory):
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("done") / "run")
    train(TrainConfig(model="vanilla_mlp", depth=13, width=8, epochs=1, out=out), progress=False, verbose=False)
    return out


@pytest.mark.parametrize("args, message", [
    (["--depth", "42"], "--depth: must be one of 18, 34, 50, 101, 152, 200"),
    (["--model", "vanilla_mlp", "--depth", "5"], "needs at least 13 nonlinear layers"),
    (["--depth", "18", "--eta", "0.97"], "needs at least"),
    (["--activation", "swishy"], "--activation: must be one of trelu, relu"),
    (["--activation", "relu", "--eta", "0.9"], "--eta: applies to --activation trelu"),
    (["--lr", "-1"], "--lr: must be > 0"),
    (["--lr", "nan"], "--lr: must be finite"),
    (["--label-smoothing", "1.5"], "--label-smoothing: must be >= 0 and < 1"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--batch-size", "5000"], "larger than the training set"),
    (["--shortcut-weight", "1.0"], "--shortcut-weight: must be >= 0 and < 1"),
    (["--warmup-epochs", "20"], "--warmup-epochs: must be below --epochs"),
    (["--data", "cifar10"], "--data-dir: --data cifar10 needs the folder"),
    (["--data-dir", "/tmp"], "--data-dir: applies to --data cifar10/cifar100/imagefolder only"),
    (["--device", "tpu"], "--device"),
    (["--resume"], "--resume: needs --out"),
    (["--optimizer", "kfac", "--kfac-damping", "0"], "--kfac-damping: must be > 0"),
    (["--optimizer", "kfac", "--kfac-norm-constraint", "-1"], "--kfac-norm-constraint: must be > 0"),
    (["--optimizer", "kfac", "--kfac-ema", "1"], "--kfac-ema: must be >= 0 and < 1"),
    (["--optimizer", "kfac", "--kfac-inverse-period", "0"], "--kfac-inverse-period: must be >= 1"),
    (["--optimizer", "kfac", "--kfac-curvature-period", "0"], "--kfac-curvature-period: must be >= 1"),
    (["--optimizer", "kfac", "--lr", "0"], "--lr: must be > 0"),
    (["--kfac-damping", "0.1"], "--kfac-damping: applies to --optimizer kfac only"),
    (["--blocks", "1,1"], "--blocks: 1,1 (bottleneck) gives depth 8; pass --depth 8, not 50"),
    (["--blocks", "1,0", "--depth", "5"], "--blocks: must be 1 to 4 integers >= 1"),
    (["--model", "vanilla_mlp", "--blocks", "1", "--depth", "5"], "--blocks: applies to the resnet models only"),
])
def test_bad_settings(args, message, capsys):
    status, err = _run_main(args, capsys)
    assert status == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(capsys):
    status, err = _run_main(["--device", "cuda"], capsys)
    assert status == 2 and "no CUDA GPU is available" in err and err.count("\n") == 1


def test_missing_and_corrupt_data_dir(tmp_path, capsys):
    status, err = _run_main(["--data", "cifar10", "--data-dir", str(tmp_path / "none")], capsys)
    assert status == 2 and "is not a directory" in err and err.count("\n") == 1
    from fake_data import make_fake_cifar

    make_fake_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"not a pickle")
    status, err = _run_main(["--data", "cifar10", "--data-dir", str(tmp_path)], capsys)
    assert status == 2 and "data_batch_2 is not a readable CIFAR-10" in err and err.count("\n") == 1


def test_out_holding_another_run_is_left_alone(finished_run, capsys):
    before = _snapshot(finished_run)
    status, err = _run_main(TINY + ["--out", finished_run], capsys)
    assert status == 2 and "already holds a run" in err and err.count("\n") == 1
    assert _snapshot(finished_run) == before


def test_resume_with_other_settings_is_refused(finished_run, capsys):
    before = _snapshot(finished_run)
    status, err = _run_main(["--model", "vanilla_mlp", "--depth", "13", "--width", "8", "--epochs", "1",
                             "--lr", "0.01", "--out", finished_run, "--resume"], capsys)
    assert status == 2 and "--lr 0.0003 -> 0.01" in err and err.count("\n") == 1
    assert _snapshot(finished_run) == before


def test_epochs_may_grow_with_a_constant_schedule_only(tmp_path, finished_run, capsys):
    """--epochs is outside the run's identity for --schedule constant (the run just goes on), inside
    it for cosine (the schedule's shape depends on it); a run is never resumed with fewer epochs than
    it has completed."""
    small = ["--model", "vanilla_mlp", "--depth", "13", "--width", "8"]
    before = _snapshot(finished_run)  # cosine, 1 epoch
    status, err = _run_main(small + ["--epochs", "2", "--out", finished_run, "--resume"], capsys)
    assert status == 2 and "--epochs 1 -> 2" in err and err.count("\n") == 1, err
    assert _snapshot(finished_run) == before

    out = str(tmp_path / "constant")
    constant = small + ["--schedule", "constant", "--out", out]
    assert _run_main(constant + ["--epochs", "1"], capsys)[0] == 0
    status, err = _run_main(constant + ["--epochs", "2", "--resume"], capsys)
    assert status == 0, err
    assert [row["epoch"] for row in _rows(out)] == [1, 2]  # the first epoch kept, one more trained
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["epoch"] == 2

    before = _snapshot(out)
    status, err = _run_main(constant + ["--epochs", "1", "--resume"], capsys)
    assert status == 2 and "--epochs" in err and "complete" in err and err.count("\n") == 1, err
    assert _snapshot(out) == before  # nothing trained, nothing written


def test_corrupt_checkpoint_is_refused_and_kept(tmp_path, finished_run, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name, data in _snapshot(finished_run).items():
        (out / name).write_bytes(data)
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    before = _snapshot(str(out))
    status, err = _run_main(["--model", "vanilla_mlp", "--depth", "13", "--width", "8", "--epochs", "1",
                             "--out", str(out), "--resume"], capsys)
    assert status == 2 and "checkpoint.pt is corrupt" in err and err.count("\n") == 1
    assert _snapshot(str(out)) == before


def test_resume_from_config_json_with_a_custom_plan(tmp_path):
    """A run killed before its first checkpoint leaves config.json, where JSON turns blocks into a list."""
    from tat_ext.train.checkpoint import prepare_run_dir, write_config

    config = TrainConfig(depth=8, blocks=(1, 1), width=2, out=str(tmp_path)).resolved()
    write_config(str(tmp_path), config, {})
    assert prepare_run_dir(dataclasses.replace(config, resume=True)) is None  # the same run: start over


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    status, err = _run_main(TINY + ["--out", str(tmp_path / "empty"), "--resume"], capsys)
    assert status == 2 and "holds no run to continue" in err
    assert not os.path.exists(tmp_path / "empty")


def test_divergence_is_reported_not_trained_on(tmp_path, capsys):
    out = str(tmp_path / "run")
    status, err = _run_main(TINY + ["--optimizer", "sgd", "--lr", "1e4", "--epochs", "2", "--out", out], capsys)
    assert status == 1 and "training diverged in epoch 1" in err and "--lr" in err and err.count("\n") == 1
    assert not os.path.exists(os.path.join(out, "checkpoint.pt"))  # the diverged state is not saved


def test_compare_reports_both_runs(capsys):
    from tat_ext.train.compare import compare, format_table

    base = TrainConfig(model="vanilla_mlp", depth=13, width=8, epochs=1)
    outcomes = compare(base, lrs=(1e-3, 1e4), progress=False)
    table = format_table(base, outcomes)
    assert [(a, lr) for a, lr, _ in outcomes] == [("trelu", 1e-3), ("trelu", 1e4), ("relu", 1e-3), ("relu", 1e4)]
    lines = table.splitlines()
    assert "lr 0.001" in lines[1] and "lr 10000" in lines[1]
    assert lines[2].startswith("TAT (TReLU)") and "%" in lines[2] and "diverged" in lines[2]
    assert lines[3].startswith("EOC ReLU") and "diverged" in lines[3]
