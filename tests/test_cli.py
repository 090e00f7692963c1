"""`tat-ext solve`: printed values, tables, and exit status 2 naming the argument on bad input."""
import os
import re
import subprocess
import sys

import pytest

from tat_ext.cli import main
from tat_ext.transform import solve_trelu


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def value(out, label):
    return float(re.search(rf"^\s*{re.escape(label)}\s*=\s*(\S+)", out, re.M).group(1))


def test_trelu_single_depth(capsys):
    code, out, _ = run(capsys, "solve", "--depth", "100", "--eta", "0.9")
    assert code == 0
    expected = solve_trelu(100, eta=0.9)
    assert value(out, "slope") == pytest.approx(expected.slope, abs=1e-12)
    assert value(out, "scale") == pytest.approx(expected.scale, abs=1e-12)
    assert value(out, "C_f(0)") == pytest.approx(0.9, abs=1e-12)


def test_trelu_table_marks_unreachable_depths(capsys):
    code, out, _ = run(capsys, "solve", "--depths", "10,50,100,200")
    assert code == 0
    rows = {int(line.split()[0]): line for line in out.splitlines() if re.match(r"\s*\d+\s", line)}
    assert set(rows) == {10, 50, 100, 200}
    assert "at least 13" in rows[10]
    for depth in (50, 100, 200):
        assert float(rows[depth].split()[1]) == pytest.approx(solve_trelu(depth).slope, abs=1e-12)


def test_smooth_tat_prints_parameters_and_invariants(capsys):
    code, out, _ = run(capsys, "solve", "--activation", "softplus", "--method", "TAT", "--depth", "50")
    assert code == 0
    for field in ("input_scale", "input_shift", "output_shift", "output_scale"):
        assert field in out
    assert value(out, "Q(1)") == pytest.approx(1.0, abs=1e-8)
    assert value(out, "Q'(1)") == pytest.approx(1.0, abs=1e-8)
    assert value(out, "C'(1)") == pytest.approx(1.0, abs=1e-8)
    assert value(out, "C''(1)") == pytest.approx(0.3 / 50, abs=1e-8)
    assert value(out, "C_f''(1)") == pytest.approx(0.3, abs=1e-8)
    assert 0.0 < value(out, "C_f(0)") < 1.0


def test_dks_relu_and_table(capsys):
    code, out, _ = run(capsys, "solve", "--activation", "relu", "--method", "dks", "--depth", "20")
    assert code == 0
    assert value(out, "C_f'(1)") == pytest.approx(1.5, abs=1e-8)
    assert value(out, "C(0)") == pytest.approx(0.0, abs=1e-12)
    assert "Q'(1) is not targeted" in out
    code, out, _ = run(capsys, "solve", "--activation", "tanh", "--method", "DKS", "--depths", "5,50", "--zeta", "2")
    assert code == 0 and "zeta = 2" in out and len(re.findall(r"^\s+(5|50)\s", out, re.M)) == 2


@pytest.mark.parametrize("argv, argument", [
    (["solve", "--depth", "0"], "--depth"),
    (["solve", "--depth", "ten"], "--depth"),
    (["solve", "--depths", "10,x"], "--depths"),
    (["solve", "--depths", "3,5"], "--depths"),
    (["solve", "--depth", "10"], "--depth"),  # eta = 0.9 needs 13 layers
    (["solve", "--depth", "20", "--eta", "1.5"], "--eta"),
    (["solve", "--depth", "20", "--eta", "nan"], "--eta"),
    (["solve", "--depth", "20", "--activation", "foo"], "--activation"),
    (["solve", "--depth", "20", "--activation", "relu"], "--activation"),
    (["solve", "--depth", "20", "--activation", "square"], "--activation"),
    (["solve", "--depth", "20", "--method", "KFAC"], "--method"),
    (["solve", "--depth", "20", "--activation", "tanh", "--eta", "0.5"], "--eta"),
    (["solve", "--depth", "20", "--zeta", "1.2"], "--zeta"),
    (["solve", "--depth", "20", "--activation", "tanh", "--method", "DKS", "--zeta", "1"], "--zeta"),
    (["solve", "--depth", "20", "--activation", "tanh", "--tau", "-1"], "--tau"),
    (["solve", "--depth", "20", "--depths", "20"], "--depths"),
    (["solve"], "--depth"),
])
def test_bad_input_exits_2_naming_the_argument(capsys, argv, argument):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert f"argument {argument}" in err or argument in err.splitlines()[-1], err


@pytest.mark.parametrize("argv, argument", [
    # Formerly a traceback (exit 1) and a hang: limits named by their option (docs/math.md, "Limits").
    (["solve", "--depth", "50", "--activation", "softplus", "--tau", "1e-300"], "--tau"),
    (["solve", "--depth", "50", "--activation", "tanh", "--method", "DKS", "--zeta", "1.0000000000001"], "--zeta"),
    (["solve", "--depth", "99999999999999999999"], "--depth"),
    (["solve", "--depth", "1000001", "--activation", "gelu"], "--depth"),
])
def test_limits_exit_2_naming_the_option(capsys, argv, argument):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.splitlines()[-1].startswith(f"tat-ext solve: error: argument {argument}: "), err


def test_no_command_and_help(capsys):
    assert run(capsys)[0] == 2
    code, out, _ = run(capsys, "solve", "--help")
    assert code == 0 and "--depths" in out


def test_python_dash_m_entry_point():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "tat_ext", "solve", "--depth", "49"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0.4259071946" in proc.stdout


def test_deep_smooth_chain_prints_fast(capsys):
    # C_f'(1), C_f''(1) in closed form; C_f(0) (one quadrature per layer) only up to 5000 layers.
    code, out, _ = run(capsys, "solve", "--activation", "tanh", "--depth", "6000")
    assert code == 0
    assert "C_f(0)   = (not computed beyond 5000 layers" in out
    assert value(out, "C_f'(1)") == pytest.approx(1.0, abs=1e-8)
    assert value(out, "C_f''(1)") == pytest.approx(0.3, rel=1e-6)
    code, out, _ = run(capsys, "solve", "--activation", "tanh", "--method", "DKS", "--depth", "7000",
                       "--zeta", "2")
    assert code == 0 and value(out, "C_f'(1)") == pytest.approx(2.0, rel=1e-6)


def test_table_marks_too_deep_rows(capsys):
    code, out, _ = run(capsys, "solve", "--depths", "50,2000000")
    assert code == 0
    assert re.search(r"^\s*2000000\s+depth=2000000 exceeds the supported maximum", out, re.M)
