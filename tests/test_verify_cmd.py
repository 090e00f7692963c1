"""`tat-ext verify`: passes on the built kernels, exits 1 when a mismatch is injected, 2 on bad input."""
import json

import pytest
import torch

from tat_ext import _extension
from tat_ext.cli import main
from tat_ext.tools import verify
from tat_ext.tools.cases import Layout

needs_extension = pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built")
SMALL = [Layout((3, 5, 7), 1, "contiguous"), Layout((2, 4, 3, 5), 1, "channels_last")]


@needs_extension
def test_quick_run_passes_and_reports_every_check(tmp_path, capsys):
    path = tmp_path / "verify.json"
    assert main(["verify", "--quick", "--device", "cpu", "--json", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "PASS: all" in out and "tolerance" in out
    doc = json.loads(path.read_text())
    assert doc["passed"] is True and doc["failed"] == 0 and doc["mode"] == "quick"
    assert doc["environment"]["extension_built"] is True
    rows = {(r["dtype"], r["check"]): r for r in doc["rows"]}
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        for check in ("forward", "grad_x", "grad_bias", "determinism"):
            row = rows[(dtype, check)]
            assert row["cases"] > 0 and row["failed"] == 0, row
            assert row["worst_err_over_tol"] <= 1.0
    assert rows[("float32", "forward")]["tolerance"] == "bitwise"
    assert rows[("float32", "grad_x")]["tolerance"] == "rtol 2e-06"
    assert rows[("bfloat16", "vs fp64 (<= 2x eager's)")]["cases"] > 0
    assert doc["checks"] == sum(r["cases"] for r in doc["rows"])


@needs_extension
def test_injected_mismatch_exits_1_through_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(verify.INJECT_ENV, "grad_bias")
    path = tmp_path / "verify.json"
    assert main(["verify", "--quick", "--device", "cpu", "--json", str(path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 1 of" in out and "FAIL cpu grad_bias:" in out
    doc = json.loads(path.read_text())
    assert doc["passed"] is False and doc["injected"] == "grad_bias"
    assert [f["check"] for f in doc["failures"]] == ["grad_bias"]


@needs_extension
@pytest.mark.parametrize("what", verify.INJECTIONS)
def test_each_check_catches_a_perturbation_just_past_its_tolerance(what):
    """One ulp in the forward; 4x the tolerance in a gradient: exactly one failure, in that check."""
    result = verify.run_verify([torch.device("cpu")], quick=True, inject=what, progress=False,
                               layouts=SMALL)
    assert not result.passed
    assert [f.check for f in result.failures] == [what]
    clean = verify.run_verify([torch.device("cpu")], quick=True, progress=False, layouts=SMALL)
    assert clean.passed and clean.total_cases == result.total_cases


def test_missing_extension_fails_instead_of_comparing_the_reference_with_itself(monkeypatch):
    monkeypatch.setattr(_extension, "AVAILABLE", False)
    monkeypatch.setattr(_extension, "LOAD_ERROR", "simulated")
    result = verify.run_verify([torch.device("cpu")], quick=True, progress=False, layouts=SMALL)
    assert not result.passed
    assert result.failures[0].check == "extension" and "simulated" in result.failures[0].detail


@pytest.mark.parametrize("argv, argument", [
    (["verify", "--device", "tpu"], "--device"),
    (["verify", "--device", "cuda:7"], "--device"),
    (["verify", "--json", "/nonexistent-dir/verify.json"], "--json"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, argument):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {argument}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_injection_is_rejected(monkeypatch, capsys):
    monkeypatch.setenv(verify.INJECT_ENV, "everything")
    assert main(["verify", "--quick", "--device", "cpu", "--no-progress"]) == 2
    assert verify.INJECT_ENV in capsys.readouterr().err
