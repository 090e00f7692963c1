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


def verify_lines(log: str) -> list[str]:
    """The last lines of `tat-ext verify` (its verdict) from its part of tests.log."""
    tail = [line for line in log.strip().splitlines() if line.strip()][-3:]
    return ["**verify:** " + (" / ".join(tail) if tail else "not run"), ""]


def sanitizer_line(log: str) -> str:
    verdicts = []
    for tool, text in sections(log).items():
        found = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: [^\n]*", text)
        verdicts.append(f"{tool}: {found[-1] if found else 'no summary line (see sanitizer.log)'}")
    return "**sanitizer:** " + ("; ".join(verdicts) if verdicts else "not run")


def bench_lines(text: str) -> list[str]:
    """The activation table of `tat-ext bench` (bench/bench.json) against the goals."""
    try:
        bench = json.loads(text)
    except ValueError:
        return ["**bench:** no bench.json (bench.log has any rows printed before it stopped)"]
    lines = [f"tat-ext bench on {bench.get('device')}. Goals at >= {GOAL_MB} MB: fused fwd >= "
             f"{GOAL_FWD_PCT}% and bwd >= {GOAL_BWD_PCT}% of a same-size copy timed in the same "
             f"run; fused fwd+bwd >= {GOAL_X_COMPILE}x compile and >= {GOAL_X_EAGER}x eager.", "",
             "| form | dtype | layout | MB | fused fwd ms | fwd % copy | bwd % copy "
             "| fwd+bwd x eager | x compile | goals |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in bench.get("activation", []):
        fused, speed = r["variants"].get("fused"), r.get("speedup", {})
        if fused is None:
            continue
        mb = r["bytes"] / 2**20
        pct = fused["pct_copy"]
        x_eager = speed.get("fused_vs_eager", {}).get("fwdbwd")
        x_compile = speed.get("fused_vs_compile", {}).get("fwdbwd")
        goal = ""
        if mb >= GOAL_MB:
            missed = [name for name, ok in (
                ("fwd bw", pct["fwd"] >= GOAL_FWD_PCT), ("bwd bw", pct["bwd"] >= GOAL_BWD_PCT),
                ("x eager", x_eager is not None and x_eager >= GOAL_X_EAGER),
                ("x compile", x_compile is None or x_compile >= GOAL_X_COMPILE)) if not ok]
            goal = "met" if not missed else "MISSED: " + ", ".join(missed)
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['form']} | {r['dtype']} | {r['layout']} | {mb:.0f} | "
                     f"{fused['fwd']['median_ms']:.3f} | {pct['fwd']:.1f} | {pct['bwd']:.1f} | "
                     f"{fmt(x_eager, '.2f')} | {fmt(x_compile, '.2f')} | {goal} |")
    if bench.get("overhead"):
        import torch  # noqa: F401  (tat_ext needs it; imported only when there is something)
        from tat_ext.tools import overhead

        lines += ["", "Fixed cost per call (us, host clock; goals: fused fwd+bwd <= 1.0x eager, "
                  "fused forward <= F.leaky_relu + 3 us, <= 25 us host time per fused fwd+bwd):",
                  "", "| elements | fwd leaky | fwd fused | f+b eager | f+b fused | goals |",
                  "|---|---|---|---|---|---|"]
        for r in bench["overhead"]:
            v = r["variants"]
            missed = overhead.goals(r, torch.device("cuda"))
            lines.append(f"| {r['elements']} | {v['leaky_relu']['fwd_us']:.1f} | "
                         f"{v['fused']['fwd_us']:.1f} | {v['eager']['fwdbwd_us']:.1f} | "
                         f"{v['fused']['fwdbwd_us']:.1f} | "
                         f"{'met' if not missed else 'MISSED: ' + '; '.join(missed)} |")
    adam = {(m["dtype"], m["layout"]): m for m in bench.get("model", []) if m.get("optimizer") == "adam"}
    for m in bench.get("model", []):
        optimizer = m.get("optimizer", "sgd")
        step = {k: v.get("amortized_step_ms", v["step"]["median_ms"]) for k, v in m["variants"].items()}
        lines.append(f"\nmodel {m['model']} depth {m['depth']} ({m['dtype']}, {m['layout']}, {optimizer}): step "
                     + ", ".join(f"{k} {v:.2f} ms" for k, v in step.items()))
        base = adam.get((m["dtype"], m["layout"]))
        if optimizer == "kfac-c10" and base:  # issue 14's goal at curvature period 10: <= 1.5x Adam's step
            lines += [f"- {name}: {ms / base['variants'][name]['step']['median_ms']:.2f}x Adam's step "
                      f"(inverses amortized over 50 steps; goal <= 1.5x)"
                      for name, ms in step.items() if name in base["variants"]]
        if m["model"] == "vanilla-resnet" and m["depth"] == 50 and optimizer == "sgd":  # issue 7's goals
            lines += [f"- {'met' if met else 'MISSED'}: {goal}: {measured}"
                      for goal, measured, met in _bench_train().verdicts("resnet50", m, "cuda")]
    if not bench.get("complete", True):
        lines.append("\n(partial: the benchmark stopped before its last configuration)")
    return lines


def _bench_train():
    """bench/bench_train.py, whose verdicts() states the training-step goals."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_train.py")
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(out: str, steps_tsv: str) -> None:
    env = read(out, "env.txt").strip()
    gpu = re.search(r"^gpu: (.*)$", env, re.M)
    lines = [f"# gpu_check: {gpu.group(1) if gpu else 'unknown GPU'}", "", "```", env, "```", "",
             "| step | status | seconds | log |", "|---|---|---|---|"]
    with open(steps_tsv) as f:
        lines += ["| " + " | ".join(row.rstrip("\n").split("\t")) + " |" for row in f if row.strip()]
    lines.append("")
    lines += tests_line(read(out, "tests.log"))
    lines += [sanitizer_line(read(out, "sanitizer.log")), ""]
    lines += verify_lines(sections(read(out, "tests.log")).get("verify", ""))
    lines += bench_lines(read(out, os.path.join("bench", "bench.json")))
    lines += [""] + bench_lines(read(out, os.path.join("model", "bench.json")))
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
