"""Runtime instruction-set dispatch of the CPU kernels (csrc/cpu/cpu_dispatch.cpp): every
capability this CPU supports passes the kernel grid, all of them give bitwise the same results,
TAT_EXT_CPU_CAPABILITY forces one (a clear error when it cannot), and the default build carries no
-march=native (the CMake side: tests/test_cmake_build.py)."""
from __future__ import annotations

import itertools
import os
import sys

import pytest
import torch

from tat_ext import _extension
from tat_ext.tools import cases, verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import build_flags  # noqa: E402  (the build's flag plan, next to setup.py)

ENV = "TAT_EXT_CPU_CAPABILITY"
needs_extension = pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built")
SUPPORTED = _extension.C.supported_cpu_capabilities() if _extension.AVAILABLE else []


def test_default_plan_targets_baseline_plus_variants():
    common, variants = build_flags.plan({})
    assert common == []  # no -march=native (nor any -march) for the code outside the variants
    if build_flags.is_x86():
        assert [v.name for v in variants] == ["default", "avx2", "avx512"]
        assert variants[0].flags == () and all(f.startswith("-m") for v in variants
                                                for f in v.flags)
        assert not any(f.startswith("-march") for v in variants for f in v.flags)
    generic_common, generic = build_flags.plan({"TAT_EXT_CPU_VARIANTS": "default"})
    assert generic_common == [] and [(v.name, v.flags) for v in generic] == [("default", ())]
    native_common, native = build_flags.plan({"TAT_EXT_MARCH": "native"})
    assert len(native) == 1 and (native_common == ["-march=native"] or not build_flags.is_x86())


@pytest.mark.parametrize("value", ["default,avx3", "avx2", "sse"])
def test_bad_variant_list_is_rejected_by_name(value):
    with pytest.raises(SystemExit, match="TAT_EXT_CPU_VARIANTS"):
        build_flags.plan({"TAT_EXT_CPU_VARIANTS": value})


@needs_extension
def test_best_supported_capability_is_the_default_choice(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert SUPPORTED and SUPPORTED[0] == "default"
    assert _extension.C.cpu_capability() == SUPPORTED[-1]


@needs_extension
@pytest.mark.parametrize("value", ["avx3", "AVX2", "native", " "])
def test_unknown_capability_is_a_value_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        _extension.C.cpu_capability()
    with pytest.raises(ValueError, match=ENV):  # and at the op, before any work
        torch.ops.tat_ext.trelu_forward(torch.ones(3), None, 0.1, 1.0, 0.0, 0.0, 1, 0)


@needs_extension
@pytest.mark.skipif(set(SUPPORTED) == {"default", "avx2", "avx512"},
                    reason="this CPU supports every capability: none to be refused")
def test_capability_the_cpu_lacks_is_refused(monkeypatch):
    missing = next(c for c in ("avx2", "avx512") if c not in SUPPORTED)
    monkeypatch.setenv(ENV, missing)
    with pytest.raises(ValueError, match=f"{ENV}={missing}"):
        _extension.C.cpu_capability()


def _grid_results():
    """Forward, grad_x and grad_bias over the kernel grid's layouts x dtypes, each with the three
    save modes (what the backward reads the signs from) and a bias kind in rotation, plus a
    layout large enough to split over threads."""
    out = []
    layouts = cases.LAYOUTS + cases.DETERMINISM_LAYOUTS[:1]
    for i, (layout, dtype) in enumerate(itertools.product(layouts, cases.DTYPES)):
        x = cases.make_input(layout, dtype, seed=i)
        g = cases.make_input(layout, dtype, seed=1000 + i)
        kind = cases.BIAS_KINDS[i % len(cases.BIAS_KINDS)]
        bias = cases.make_bias(x, layout.channel_dim, cases.bias_dtype(kind, dtype))
        for save in ("input", "output", "mask"):
            y, grads = cases.forward_backward(
                lambda a, b, **kw: torch.ops.tat_ext.trelu(a, b, **kw), x, bias, g,
                channel_dim=layout.channel_dim, save=save, **cases.PARAMS[2])
            out.append((f"{layout.id} {dtype} bias={kind} save={save}", y, grads))
    return out


@needs_extension
@pytest.mark.skipif(len(SUPPORTED) < 2, reason="only one CPU capability on this machine")
def test_every_capability_gives_bitwise_the_same_results(monkeypatch):
    monkeypatch.setenv(ENV, SUPPORTED[0])
    reference = _grid_results()
    for capability in SUPPORTED[1:]:
        monkeypatch.setenv(ENV, capability)
        assert _extension.C.cpu_capability() == capability
        for (case, y0, g0), (_, y1, g1) in zip(reference, _grid_results()):
            assert torch.equal(y0, y1), f"{capability} forward differs: {case}"
            for a, b in zip(g0, g1):
                assert torch.equal(a, b), f"{capability} gradient differs: {case}"


@needs_extension
@pytest.mark.parametrize("capability", SUPPORTED)
def test_each_capability_passes_the_kernel_grid(monkeypatch, capability):
    monkeypatch.setenv(ENV, capability)
    result = verify.run_verify([torch.device("cpu")], quick=True, progress=False)
    assert result.passed, verify.format_result(result)
