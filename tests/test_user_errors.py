"""One user-error type, reported once by the command line with the flag named (issue 18 item 1),
and the rough edges a new user hit (item 8): an --out that cannot be created, a full disk while
the checkpoint is written, --resume of a run without a checkpoint or of a finished one, extending
a cosine run, profile's depth hint, torch's CUDA_HOME warning and noisy benchmark rows."""
import errno
import logging
import os

import pytest
import torch

from tat_ext import _validate, cli
from tat_ext.errors import RunError, UserError, to_flag
from tat_ext.tools import bench
from tat_ext.tools.common import UsageError
from tat_ext.train import Diverged, TrainError
from tat_ext.utils import files

pytestmark = pytest.mark.usefixtures("one_thread")

# A small vanilla TAT MLP on the digits: 13 nonlinear layers is the least that reaches eta = 0.9.
TINY = ["--model", "vanilla_mlp", "--depth", "13", "--width", "8", "--batch-size", "256", "--seed", "1"]


def _main(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _one_line(err):
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# -- item 1: one error type, the flag named -----------------------------------------------------------


def test_every_user_error_is_a_user_error_naming_its_argument():
    assert issubclass(_validate.ArgumentValueError, UserError) and issubclass(UsageError, UserError)
    assert issubclass(TrainError, UserError) and issubclass(UserError, ValueError)
    assert issubclass(Diverged, RunError) and issubclass(RunError, RuntimeError)
    with pytest.raises(UserError) as info:
        _validate.real("shortcut_weight", 1.5, ge=0.0, lt=1.0)
    assert str(info.value) == "shortcut_weight must be >= 0 and < 1, got 1.5"  # Python callers: unchanged
    assert info.value.one_line() == "argument --shortcut-weight: must be >= 0 and < 1, got 1.5"
    error = UserError("depth", "depth must be one of 18, 34 (or pass blocks= for a custom plan), got 7")
    assert error.one_line() == "argument --depth: must be one of 18, 34 (or pass --blocks for a custom plan), got 7"
    assert str(TrainError("--eta", "applies to trelu")) == "--eta: applies to trelu"
    assert TrainError("--eta", "applies to trelu").one_line() == "argument --eta: applies to trelu"
    assert UsageError("--out", "cannot write").one_line() == "argument --out: cannot write"
    assert [to_flag(a) for a in ("blocks[2]", "--out", "TAT_EXT_VERIFY_INJECT", None)] == [
        "--blocks", "--out", "TAT_EXT_VERIFY_INJECT", None]


def test_unreachable_eta_is_reported_under_eta_not_model(capsys):
    status, _, err = _main(capsys, "train", "--model", "vanilla_mlp", "--depth", "5", "--epochs", "1")
    assert status == 2
    line = _one_line(err)
    assert line.startswith("tat-ext train: error: argument --eta: ") and "needs at least 13" in line, line


def test_builder_messages_name_flags_not_python_arguments(capsys):
    status, _, err = _main(capsys, "train", "--depth", "42")
    line = _one_line(err)
    assert status == 2 and line.startswith("tat-ext train: error: argument --depth: must be one of 18")
    assert "pass --blocks for a custom plan" in line and "blocks=" not in line


# -- item 8: the run directory -------------------------------------------------------------------------


def test_out_that_cannot_be_created_is_one_line_and_status_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    status, _, err = _main(capsys, "train", *TINY, "--epochs", "1", "--out", str(blocker / "run"))
    line = _one_line(err)
    assert status == 2 and line.startswith("tat-ext train: error: argument --out: cannot write to"), line


@pytest.fixture(scope="module")
def one_epoch_runs(tmp_path_factory):
    """A finished one-epoch run with each schedule: {schedule: run directory}."""
    runs = {}
    for schedule in ("constant", "cosine"):
        out = str(tmp_path_factory.mktemp(schedule) / "run")
        assert cli.main(["train", *TINY, "--epochs", "1", "--schedule", schedule, "--out", out]) == 0
        runs[schedule] = out
    return runs


def _snapshot(directory):
    """The run's files but config.json (rewritten by every --resume: it records the call's settings)."""
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))
            if n != "config.json"}


def test_full_disk_while_writing_the_checkpoint(one_epoch_runs, tmp_path, capsys, monkeypatch):
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(one_epoch_runs["constant"], out)
    before = _snapshot(out)
    real_write = files._RecordingWriter.write

    def write(self, data):  # ENOSPC part-way through the checkpoint, as a small tmpfs gives it
        if os.path.basename(self.name).startswith(".checkpoint.pt"):
            real_write(self, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(files._RecordingWriter, "write", write)
    status, _, err = _main(capsys, "train", *TINY, "--epochs", "2", "--schedule", "constant", "--out", out,
                           "--resume")
    line = _one_line(err)
    assert status == 1, line
    assert f"cannot write {os.path.join(out, 'checkpoint.pt')}: No space left on device" in line, line
    assert "enforce fail" not in line and "unexpected pos" not in line
    # Nothing partial is left and the earlier checkpoint (and metrics) are as they were.
    assert _snapshot(out) == before
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["epoch"] == 1


def test_resume_without_a_checkpoint_says_it_starts_over(one_epoch_runs, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(one_epoch_runs["constant"], out)
    for name in ("checkpoint.pt", "metrics.jsonl", "curves.png"):
        os.remove(os.path.join(out, name))
    status, printed, _ = _main(capsys, "train", *TINY, "--epochs", "1", "--schedule", "constant", "--out", out,
                               "--resume")
    assert status == 0
    assert "--resume: " + out + " holds config.json but no checkpoint.pt" in printed
    assert "starting from epoch 1" in printed and "epoch   1/1" in printed


def test_resuming_a_finished_run_says_it_is_complete(one_epoch_runs, capsys):
    out = one_epoch_runs["constant"]
    before = _snapshot(out)
    status, printed, _ = _main(capsys, "train", *TINY, "--epochs", "1", "--schedule", "constant", "--out", out,
                               "--resume")
    assert status == 0
    assert f"the run in {out} is already complete (1 of 1 epochs" in printed and "nothing to train" in printed
    assert "resuming" not in printed and "epoch   1/1" not in printed
    assert _snapshot(out) == before


def test_extending_a_cosine_run_says_what_was_passed_and_what_is_allowed(one_epoch_runs, capsys):
    out = one_epoch_runs["cosine"]
    status, _, err = _main(capsys, "train", *TINY, "--epochs", "3", "--schedule", "constant", "--out", out,
                           "--resume")
    line = _one_line(err)
    assert status == 2
    assert "--epochs 1 -> 3" in line and "--schedule 'cosine' -> 'constant'" in line and "None" not in line, line
    assert "cannot be extended" in line and "--schedule constant" in line


def test_a_cosine_run_warns_that_its_length_is_fixed(tmp_path, capsys):
    status, printed, _ = _main(capsys, "train", *TINY, "--epochs", "1", "--out", str(tmp_path / "run"))
    assert status == 0 and "this run's length is fixed" in printed
    status, printed, _ = _main(capsys, "train", *TINY, "--epochs", "1", "--schedule", "constant",
                               "--out", str(tmp_path / "constant"))
    assert status == 0 and "length is fixed" not in printed


# -- item 8: bench and profile -------------------------------------------------------------------------


def test_profile_depth_hint_names_a_depth_not_eta(tmp_path, capsys):
    status, _, err = _main(capsys, "profile", "--depth", "5", "--out", str(tmp_path / "out"))
    line = _one_line(err)
    assert status == 2 and line.startswith("tat-ext profile: error: argument --depth: "), line
    assert "pass --depth 13 or more" in line and "eta <=" not in line


def test_no_cuda_runtime_warning_is_dropped_and_other_warnings_stay(caplog):
    logger = logging.getLogger("torch.utils.cpp_extension")
    cli.main(["solve", "--depth", "49"])  # cli.main installs the filter
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("another warning")
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == ["another warning"]


def _step(median, q1, q3):
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "min_ms": q1, "max_ms": q3, "reps": 5}


@pytest.mark.parametrize("noisy", [False, True])
def test_bench_flags_timings_whose_spread_exceeds_the_value(noisy):
    step = _step(1.0, 0.1, 3.5) if noisy else _step(1.0, 0.9, 1.2)  # half IQR 1.7 vs 0.15
    record = {"model": "conv-chain", "depth": 13, "width": 8, "resolution": 8, "batch": 2, "dtype": "float32",
              "layout": "nchw", "speedup": {},
              "variants": {"eager": {"step": step, "forward_no_grad": _step(0.5, 0.45, 0.6),
                                     "peak_bytes": None, "saved_bytes": None, "kernel_launches": None,
                                     "loss_first_step": 2.3}}}
    table = bench.model_table([record])
    assert ("1.000±1.700" + bench.NOISY_MARK in table) == noisy
    assert ("noisy: the spread (half the interquartile range) exceeds the median" in table) == noisy
