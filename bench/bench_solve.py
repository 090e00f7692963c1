"""Time the parameter solvers: solve_trelu over depths, and TAT/DKS for every registered activation.

    python bench/bench_solve.py [--dks-path DIR] [--write bench/results/solve_cpu.md]

Goals (issue 3): solve_trelu < 50 ms up to depth 10,000; each smooth solve < 1 s. With
``--dks-path`` (a folder holding the reference library ``dks`` and its dependencies, e.g. from
``pip install --target DIR dks autograd absl-py``) the same inputs are also timed with
``dks.pytorch.get_transformed_activations``, each in its own process with a time limit.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tat_ext.activations import activation_names  # noqa: E402
from tat_ext.transform import solve_dks, solve_tat, solve_trelu  # noqa: E402

TRELU_DEPTHS = (13, 49, 100, 1000, 10_000)
SMOOTH_DEPTHS = (5, 50, 1000)
DKS_DEPTH = 50
DKS_TIMEOUT_S = 120


def chain(depth: int):
    def subnet_max_func(x, r_fn):
        for _ in range(depth):
            x = r_fn(x)
        return x
    return subnet_max_func


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: torch op dispatch, cached quadrature nodes
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_ours(fn: Callable[[], object], repeats: int) -> str:
    start = time.perf_counter()
    try:
        ms = median_ms(fn, repeats)
        return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"
    except ValueError:  # an unsolvable target: report how long it takes to say so
        return f"no solution ({(time.perf_counter() - start) * 1e3:.0f} ms)"


DKS_SNIPPET = """
import sys, time, warnings
sys.path.insert(0, {path!r})
warnings.simplefilter("ignore")
from dks.pytorch.activation_transform import get_transformed_activations
L = {depth}
def chain(x, r):
    for _ in range(L):
        x = r(x)
    return x
start = time.perf_counter()
try:
    get_transformed_activations([{name!r}], method={method!r}, max_slope_func=lambda s: s ** L,
                                max_curv_func=lambda k: L * k, subnet_max_func=chain)
    print("%.1f" % ((time.perf_counter() - start) * 1e3))
except ValueError as error:  # unknown name, or no parameters found
    reason = "unsupported name" if "Unrecognized" in str(error) else "no solution"
    print("%s (%.0f ms)" % (reason, (time.perf_counter() - start) * 1e3))
"""


def time_dks(path: str, name: str, method: str, depth: int) -> str:
    code = DKS_SNIPPET.format(path=path, name=name, method=method, depth=depth)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=DKS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"> {DKS_TIMEOUT_S} s"
    if proc.returncode != 0:
        return "error: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:60]
    return proc.stdout.strip()


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = "\n".join(cpu.splitlines()[:10])
    except (OSError, subprocess.TimeoutExpired):
        cpu = platform.processor()
    return (f"```\n{cpu}\n```\n\npython {platform.python_version()}, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dks-path", help="folder holding the reference library dks (optional)")
    parser.add_argument("--write", metavar="PATH", help="also write the tables as markdown to PATH")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per solve (median)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # DKS-with-ReLU advice

    sections = []
    trelu_header = ["depth", "tat_ext solve_trelu (ms)"] + (["dks (ms)"] if args.dks_path else [])
    trelu_rows = []
    for depth in TRELU_DEPTHS:
        row = [str(depth), time_ours(lambda: solve_trelu(depth), args.repeats)]
        if args.dks_path:
            row.append(time_dks(args.dks_path, "leaky_relu", "TAT", depth))
        trelu_rows.append(row)
        print(" | ".join(row), flush=True)
    sections.append("## solve_trelu (eta = 0.9, plain chains)\n\n" + table(trelu_header, trelu_rows))

    header = ["activation"] + [f"{m} L={d} (ms)" for m in ("TAT", "DKS") for d in SMOOTH_DEPTHS]
    if args.dks_path:
        header += [f"dks {m} L={DKS_DEPTH} (ms)" for m in ("TAT", "DKS")]
    rows = []
    for name in activation_names():
        row = [name]
        for solve, method in ((solve_tat, "TAT"), (solve_dks, "DKS")):
            for depth in SMOOTH_DEPTHS:
                if method == "TAT" and name in ("relu", "leaky_relu"):
                    row.append("(TReLU)")
                else:
                    row.append(time_ours(lambda: solve(name, depth), max(1, args.repeats // 2)))
        if args.dks_path:
            for method in ("TAT", "DKS"):
                skip = method == "TAT" and name in ("relu", "leaky_relu")
                row.append("(TReLU)" if skip else time_dks(args.dks_path, name, method, DKS_DEPTH))
        rows.append(row)
        print(" | ".join(row), flush=True)
    sections.append("## Smooth solves (tau = 0.3, zeta = 1.5, plain chains of L layers)\n\n"
                    + table(header, rows))

    report = "\n\n".join(sections)
    print("\n" + report)
    if args.write:
        given = argv if argv is not None else sys.argv[1:]
        command = "python " + " ".join([os.path.relpath(__file__)] + given)
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(f"# Solver timings (CPU)\n\nCommand: `{command}`\n\n{machine()}\n\n"
                    "Median of the timed repeats after one warm-up call; dks: one call in a fresh process "
                    "(import excluded), the reference library's own 100,000-node quadrature.\n\n"
                    f"{report}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
