"""Compiler flags of the C++ CPU code, per instruction set (setup.py builds with them; CMakeLists.txt
mirrors them; tests/test_cpu_dispatch.py checks them).

The default build targets baseline x86-64 and adds the vectorized kernels (csrc/cpu/isa/) once per
instruction set, each with its own flags; csrc/cpu/cpu_dispatch.cpp picks one at run time. Switches:

  TAT_EXT_CPU_VARIANTS   comma list of the kernel variants to compile (default: default,avx2,avx512
                         on x86-64, default elsewhere). "default" alone is the generic build (no
                         instruction-set flags anywhere), what a non-x86 machine gets.
  TAT_EXT_MARCH          opt-in -march for ALL C++ code (e.g. "native": only for the machine that
                         builds it; an extension built so can die with SIGILL elsewhere). Then one
                         kernel variant is compiled: the best that -march enables.
"""
from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

Macro = Tuple[str, Optional[str]]


@dataclass(frozen=True)
class Variant:
    name: str  # a TAT_EXT_CPU_CAPABILITY value
    source: str  # the translation unit, relative to the repository root
    flags: Tuple[str, ...]  # instruction-set flags (besides the common ones)
    macros: Tuple[Macro, ...]  # at::vec's capability macros: they select its intrinsics
    compiler_macros: frozenset  # what the compiler defines when these instructions are enabled


def _variant(name: str, capability: str, flags: Tuple[str, ...], needs: Tuple[str, ...]) -> Variant:
    return Variant(name, f"csrc/cpu/isa/kernels_{name}.cpp", flags,
                   (("CPU_CAPABILITY", capability), (f"CPU_CAPABILITY_{capability}", None)),
                   frozenset(needs))


# ATen's own choice of flags for its AVX2 and AVX-512 kernels (plus F16C for the fp16 loads).
VARIANTS: Dict[str, Variant] = {
    "default": _variant("default", "DEFAULT", (), ()),
    "avx2": _variant("avx2", "AVX2", ("-mavx2", "-mfma", "-mf16c"),
                     ("__AVX2__", "__FMA__", "__F16C__")),
    "avx512": _variant("avx512", "AVX512",
                       ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"),
                       ("__AVX512F__", "__AVX512BW__", "__AVX512VL__", "__AVX512DQ__", "__FMA__",
                        "__F16C__")),
}


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def _compiler_macros(flags: List[str], compiler: str) -> set:
    try:
        out = subprocess.run([compiler, *flags, "-dM", "-E", "-x", "c++", "-"], input="",
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"TAT_EXT_MARCH: {' '.join(flags)} is not accepted by {compiler}: {exc}")
    return {line.split()[1] for line in out.splitlines() if line.startswith("#define __")}


def plan(env: Mapping[str, str] = os.environ) -> Tuple[List[str], List[Variant]]:
    """(flags for every C++ file, the kernel variants to compile) under the environment `env`."""
    march = env.get("TAT_EXT_MARCH", "").strip()
    if march and march != "baseline" and is_x86():
        common = [f"-march={march}"]
        enabled = _compiler_macros(common, env.get("CXX", "c++"))
        best = [v for v in VARIANTS.values() if v.compiler_macros <= enabled][-1]
        return common, [Variant(best.name, best.source, (), best.macros, best.compiler_macros)]
    default = "default,avx2,avx512" if is_x86() else "default"
    names = [n.strip() for n in env.get("TAT_EXT_CPU_VARIANTS", default).split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "default" not in names:
        raise SystemExit(f"TAT_EXT_CPU_VARIANTS must list default and optionally avx2, avx512 "
                         f"(comma-separated), got {env.get('TAT_EXT_CPU_VARIANTS')!r}")
    if not is_x86() and names != ["default"]:
        raise SystemExit(f"TAT_EXT_CPU_VARIANTS: {platform.machine()} has only the default variant")
    return [], [VARIANTS[n] for n in VARIANTS if n in names]


def presence_macros(variants: List[Variant]) -> List[Macro]:
    """TAT_EXT_CPU_KERNELS_<ISA> for each compiled variant (csrc/cpu/cpu_dispatch.cpp reads them)."""
    return [(f"TAT_EXT_CPU_KERNELS_{v.name.upper()}", None) for v in variants]


def _cmake_lines(env: Mapping[str, str]) -> List[str]:
    """CMakeLists.txt reads the plan from these lines: `common|<flags>`, then one
    `variant|<name>|<source>|<flags>|<definitions>` per kernel variant (items joined by ',')."""
    common, variants = plan(env)
    lines = ["common|" + ",".join(common)]
    for v in variants:
        defs = [k if val is None else f"{k}={val}" for k, val in v.macros]
        lines.append(f"variant|{v.name}|{v.source}|{','.join(v.flags)}|{','.join(defs)}")
    return lines


if __name__ == "__main__":  # `python build_flags.py`: the plan for CMakeLists.txt
    print("\n".join(_cmake_lines(os.environ)))
