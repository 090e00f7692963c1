"""Writes OUTDIR/summary.md for bench/gpu_check.sh from what its steps have left so far.

    python bench/gpu_check_summary.py OUTDIR STEPS_TSV

STEPS_TSV: one line per finished step, "name<TAB>status<TAB>seconds<TAB>log". Called after every
step, so a run cut short still leaves a summary; each file it reads may be missing or partial.
"""
from __future__ import annotations

import json
import os
import re
import sys

# Goals for activations of >= 64 MB (the project's brief): bandwidth as % of the copy ceiling.
GOAL_MB, GOAL_FWD_PCT, GOAL_BWD_PCT, GOAL_X_EAGER, GOAL_X_COMPILE = 64, 90, 85, 3.0, 1.1


def read(out: str, name: str) -> str:
    try:
        with open(os.path.join(out, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def sections(log: str) -> dict[str, str]:
    """The parts of a log that gpu_check.sh headed with '### name: command'."""
    parts = re.split(r"^### (\w+): .*$", log, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def tests_line(log: str) -> list[str]:
    final = re.findall(r"^=+ (.* in [0-9.]+s.*?) =+$", log, re.M)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", log, re.M)))
    if final:
        lines = [f"**tests:** {final[-1]}"]
    else:  # cut short: count the per-test lines of pytest -v
        counts = {k: len(re.findall(rf"::\S+ {k}\b", log)) for k in
                  ("PASSED", "FAILED", "ERROR", "SKIPPED")}
        failed = sorted(set(re.findall(r"^(\S+::\S+) (?:FAILED|ERROR)\b", log, re.M)))
        lines = [f"**tests:** no pytest summary (cut short?); so far {counts['PASSED']} passed, "
                 f"{counts['FAILED']} failed, {counts['ERROR']} errors, "
                 f"{counts['SKIPPED']} skipped" if log else "**tests:** not run"]
    lines += [f"- FAILED {name}" for name in failed[:30]]
    if len(failed) > 30:
        lines.append(f"- ... and {len(failed) - 30} more (tests.log)")
    return lines


def sanitizer_line(log: str) -> str:
    verdicts = []
    for tool, text in sections(log).items():
        found = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: [^\n]*", text)
        verdicts.append(f"{tool}: {found[-1] if found else 'no summary line (see sanitizer.log)'}")
    return "**sanitizer:** " + ("; ".join(verdicts) if verdicts else "not run")


def bandwidth_line(log: str) -> str:
    m = re.findall(r"^copy_bw: (\{.*\})$", log, re.M)
    if not m:
        return "**copy bandwidth:** not measured"
    bw = json.loads(m[-1])
    return (f"**copy bandwidth (read+write):** median {bw['median_gbs']:.0f} GB/s, best "
            f"{bw['best_gbs']:.0f} GB/s ({bw['gpu']})")


def bench_lines(text: str) -> list[str]:
    try:
        bench = json.loads(text)
    except ValueError:
        return ["**bench:** no bench.json (bench.log has any rows printed before it stopped)"]
    lines = [f"bench_act.py ({bench.get('machine')}, torch {bench.get('torch')}; its copy ceiling "
             f"{bench.get('copy_ceiling_gbs', 0):.0f} GB/s). Goals for >= {GOAL_MB} MB: fwd >= "
             f"{GOAL_FWD_PCT}% and bwd >= {GOAL_BWD_PCT}% of the ceiling; fwd+bwd >= "
             f"{GOAL_X_COMPILE}x compile and >= {GOAL_X_EAGER}x eager.", "",
             "| dtype | layout | MB | pass | fused ms | eager ms | compile ms | GB/s | % ceil "
             "| x eager | x compile | goal |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in bench.get("results", []):
        ms, xc = r["ms"], r.get("speedup_vs_compile")
        goal = ""
        if r["mb"] >= GOAL_MB:
            if r["phase"] == "fwd":
                ok = r["pct_ceiling"] >= GOAL_FWD_PCT
            elif r["phase"] == "bwd":
                ok = r["pct_ceiling"] >= GOAL_BWD_PCT
            else:
                ok = r["speedup_vs_eager"] >= GOAL_X_EAGER and (xc is None or xc >= GOAL_X_COMPILE)
            goal = "met" if ok else "MISSED"
        lines.append(f"| {r['dtype']} | {r['layout']} | {r['mb']:.0f} | {r['phase']} | "
                     f"{fmt(ms.get('fused'))} | {fmt(ms.get('eager'))} | {fmt(ms.get('compile'))} "
                     f"| {r['fused_gbs']:.0f} | {r['pct_ceiling']:.1f} | "
                     f"{r['speedup_vs_eager']:.2f} | {fmt(xc)} | {goal} |")
    if not bench.get("complete", True):
        lines.append("\n(partial: the benchmark stopped before its last configuration)")
    return lines


def main(out: str, steps_tsv: str) -> None:
    env = read(out, "env.txt").strip()
    gpu = re.search(r"^gpu: (.*)$", env, re.M)
    lines = [f"# gpu_check: {gpu.group(1) if gpu else 'unknown GPU'}", "", "```", env, "```", "",
             "| step | status | seconds | log |", "|---|---|---|---|"]
    with open(steps_tsv) as f:
        lines += ["| " + " | ".join(row.rstrip("\n").split("\t")) + " |" for row in f if row.strip()]
    lines.append("")
    lines += tests_line(read(out, "tests.log"))
    lines += [sanitizer_line(read(out, "sanitizer.log")), bandwidth_line(read(out, "bench.log")),
              ""]
    lines += bench_lines(read(out, "bench.json"))
    tmp = os.path.join(out, ".summary.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out, "summary.md"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
