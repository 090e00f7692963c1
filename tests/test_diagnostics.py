"""Kernel diagnostics: a real 50-layer TReLU MLP at initialization against the C-map prediction."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tat_ext.data import per_location_normalization
from tat_ext.diagnostics import check_initialization, measure_kernel, predicted_cosine
from tat_ext.init import tat_init_
from tat_ext.transform import solve_trelu

DEPTH, WIDTH, PAIRS, ETA = 50, 1024, 8, 0.9


class _TReLU(nn.Module):
    """scale · LReLU_slope in plain torch, independent of the package's fused op."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.scale = math.sqrt(2.0 / (1.0 + slope**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.leaky_relu(x, self.slope)


@pytest.fixture(scope="module")
def deep_trace():
    slope = solve_trelu(DEPTH, eta=ETA).slope
    torch.manual_seed(0)
    layers = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), _TReLU(slope)]
    # 50 QRs of 1024x1024 dominate this test; multi-threaded LAPACK slows them ~6x when the few CPU
    # cores are shared with other jobs, so draw them single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tat_init_(nn.Sequential(*layers))
    finally:
        torch.set_num_threads(threads)
    x_a, x_b = torch.randn(2, PAIRS, WIDTH)
    # Gram-Schmidt: each x_b[i] orthogonal to x_a[i]; then PLN makes q = 1 (one location, no homog coord).
    x_b = x_b - (x_a * x_b).sum(1, keepdim=True) / x_a.square().sum(1, keepdim=True) * x_a
    x_a, x_b = (per_location_normalization(x, homog_mode="off") for x in (x_a, x_b))
    return slope, model, measure_kernel(model, x_a, x_b)


def test_output_cosine_matches_prediction(deep_trace):
    slope, _, trace = deep_trace
    assert predicted_cosine(0.0, slope, DEPTH) == pytest.approx(ETA, abs=1e-9)
    torch.testing.assert_close(trace.input_cosine, torch.zeros(PAIRS, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(trace.q_a[0], torch.ones(PAIRS, dtype=torch.float64), rtol=0, atol=1e-6)
    # Finite width (1024) adds O(1/sqrt(width)) noise per layer: the pair average is the statistic
    # the issue bounds by 0.03 (it is -0.015 for this seed; std ~0.013 over seeds, mostly from the
    # shared weights); single pairs spread about twice as wide.
    gap = trace.cosine_gap(slope, DEPTH)
    assert abs(gap.mean().item()) < 0.03, trace.output_cosine
    assert gap.abs().max().item() < 0.06, trace.output_cosine
    # The cosine climbs monotonically in expectation from 0 to 0.9 through the activations.
    act_cos = trace.cosine[2:-1:2].mean(1)
    predicted = torch.tensor([predicted_cosine(0.0, slope, k) for k in range(1, DEPTH + 1)], dtype=torch.float64)
    assert (act_cos - predicted).abs().max().item() < 0.05


def test_q_trace_stays_near_one(deep_trace):
    _, _, trace = deep_trace
    assert trace.names[0] == "(input)" and trace.names[-1] == "(output)"
    assert trace.names[1:-1] == tuple(str(i) for i in range(2 * DEPTH))
    q = torch.stack([trace.q_a, trace.q_b])  # [2, rows, pairs]
    # Square orthogonal layers with zero bias preserve q exactly: each Linear row equals the row before.
    torch.testing.assert_close(q[:, 1:-1:2], q[:, 0:-2:2], rtol=1e-4, atol=0)
    # Each TReLU preserves q in expectation (Q(q) = q): per layer and example the ratio has std ~0.04
    # at width 1024, and its mean over the 50 layers and 16 examples is 1 to within ~0.007 (0.994 for
    # this seed), while a 2% error in the scale would move it by 0.04.
    ratios = q[:, 2:-1:2] / q[:, 1:-2:2]
    assert abs(ratios.mean().item() - 1.0) < 0.02
    # Individual q values random-walk (per-layer relative std ~0.037, ~0.26 after 50 layers in log q).
    assert q.min().item() > 1 / 3 and q.max().item() < 3


def test_predicted_cosine():
    slope = 0.3
    assert predicted_cosine(0.25, slope, 0) == 0.25
    # C_α(0) = (1-α)²/(π(1+α²)) and C_α(1) = 1 (docs/math.md, "TReLU").
    assert predicted_cosine(0.0, slope, 1) == pytest.approx((1 - slope) ** 2 / (math.pi * (1 + slope**2)), abs=1e-15)
    assert predicted_cosine(1.0, slope, 10) == pytest.approx(1.0, abs=1e-15)
    # Two layers: C(C(c)) for c = 0.5 by the closed form written out here.
    k = (1 - slope) ** 2 / (math.pi * (1 + slope**2))
    c = 0.5
    for _ in range(2):
        c = c + k * (math.sqrt(1 - c * c) - c * math.acos(c))
    assert predicted_cosine(0.5, slope, 2) == pytest.approx(c, abs=1e-15)
    # Tensors in, float64 tensors out; rounding just above 1 is tolerated.
    out = predicted_cosine(torch.tensor([0.0, 0.5, 1.0 + 1e-12], dtype=torch.float64), slope, 2)
    assert out.dtype == torch.float64 and out.shape == (3,)
    assert out[1].item() == pytest.approx(c, abs=1e-7)
    with pytest.raises(ValueError, match="depth"):
        predicted_cosine(0.0, slope, -1)
    with pytest.raises(ValueError, match="slope"):
        predicted_cosine(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="c_in"):
        predicted_cosine(1.5, slope, 3)


def _small_model() -> nn.Module:
    torch.manual_seed(5)
    return tat_init_(nn.Sequential(nn.Linear(16, 32), _TReLU(0.5), nn.Sequential(nn.Linear(32, 32), _TReLU(0.5))))


def test_module_selection_and_hooks_removed():
    model = _small_model()
    x_a, x_b = torch.randn(2, 3, 16)
    default = measure_kernel(model, x_a, x_b)
    assert default.names == ("(input)", "0", "1", "2.0", "2.1", "(output)")
    assert default.q_a.shape == default.q_b.shape == default.cosine.shape == (6, 3)
    chosen = measure_kernel(model, x_a, x_b, modules=["1", model[2][1]])
    assert chosen.names == ("(input)", "1", "2.1", "(output)")
    torch.testing.assert_close(chosen.cosine[1], default.cosine[2])
    # Independent check of one row: q and cosine of the first activation computed directly.
    with torch.no_grad():
        h_a, h_b = model[1](model[0](x_a)), model[1](model[0](x_b))
    torch.testing.assert_close(chosen.q_a[1], h_a.double().square().mean(1))
    torch.testing.assert_close(chosen.cosine[1], F.cosine_similarity(h_a, h_b, dim=1).double(), rtol=1e-5, atol=1e-6)
    assert all(not m._forward_hooks for m in model.modules())
    assert "2.1" in chosen.table() and len(chosen.table().splitlines()) == 5


def test_identical_inputs_keep_cosine_one():
    model = _small_model()
    x = torch.randn(4, 16)
    trace = measure_kernel(model, x, x.clone())
    torch.testing.assert_close(trace.cosine, torch.ones_like(trace.cosine))
    assert trace.cosine_gap(0.5, 2).abs().max().item() < 1e-6


def test_errors_and_hook_cleanup():
    model = _small_model()
    x = torch.randn(2, 16)
    with pytest.raises(ValueError, match="'nope'"):
        measure_kernel(model, x, x, modules=["nope"])
    with pytest.raises(ValueError, match="not part of the model"):
        measure_kernel(model, x, x, modules=[nn.ReLU()])
    with pytest.raises(TypeError, match="modules"):
        measure_kernel(model, x, x, modules=[3])
    with pytest.raises(ValueError, match="same shape"):
        measure_kernel(model, x, torch.randn(3, 16))
    with pytest.raises(TypeError, match="x_a"):
        measure_kernel(model, torch.ones(2, 16, dtype=torch.int64), x)

    class Pair(nn.Module):
        def forward(self, h):
            return h, h

    bad = nn.Sequential(Pair())
    with pytest.raises(TypeError, match="model must return"):
        measure_kernel(bad, x, x)
    with pytest.raises(TypeError, match="'0'"):
        measure_kernel(bad, x, x, modules=["0"])
    assert not bad[0]._forward_hooks


# --- Argument types (issue 8) ----------------------------------------------------------------------

def test_predicted_cosine_argument_types():
    expected = predicted_cosine(0.25, 0.3, 7)
    assert predicted_cosine(np.float32(0.25), np.float64(0.3), np.int64(7)) == pytest.approx(expected, abs=1e-15)
    array = predicted_cosine(np.array([0.25, 0.5]), 0.3, 7)
    assert isinstance(array, np.ndarray) and array[0] == pytest.approx(expected, abs=1e-15)
    for call, error, match in [
        (lambda: predicted_cosine(0.0, "0.2", 3), TypeError, "slope must be a real number"),
        (lambda: predicted_cosine(0.0, 10**400, 3), ValueError, "slope must be finite"),
        (lambda: predicted_cosine(0.0, 0.2, 3.0), TypeError, "depth must be an int"),
        (lambda: predicted_cosine(0.0, 0.2, 10**7), ValueError, "depth must be >= 0 and <= 1000000"),
        (lambda: predicted_cosine("0.5", 0.2, 3), TypeError, "c_in must be a real number"),
        (lambda: predicted_cosine(float("nan"), 0.2, 3), ValueError, "c_in must lie in"),
    ]:
        with pytest.raises(error, match=match):
            call()


def test_measure_kernel_rejects_a_single_name_or_module():
    model = _small_model()
    x = torch.randn(2, 16)
    # Formerly "layer1" was iterated character by character ('l' is not a submodule name...).
    with pytest.raises(TypeError, match=r"modules must be a list.*modules=\['2'\]"):
        measure_kernel(model, x, x, modules="2")
    with pytest.raises(TypeError, match="modules must be a list"):
        measure_kernel(model, x, x, modules=model[2])  # a Sequential would iterate its children
    assert measure_kernel(model, x, x, modules=("2",)).names == ("(input)", "2", "(output)")


# --- check_initialization ----------------------------------------------------------------------------

def _deep_mlp(depth: int, width: int, slope: float) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), _TReLU(slope)]
    return nn.Sequential(*layers)


def test_default_init_is_flagged_and_collapses_the_kernel():
    # The failure check_initialization exists for: forgetting tat_init_ (issue 8). Default init
    # shrinks q ~3x per layer until the random biases dominate: every pair ends up at cosine ~1.
    depth, width = 50, 128
    slope = solve_trelu(depth).slope
    torch.manual_seed(9)
    model = _deep_mlp(depth, width, slope)
    problems = check_initialization(model)
    assert [p.layer for p in problems] == [str(2 * i) for i in range(depth)]
    assert all("not (scaled) orthogonal" in str(p) and "tat_ext.init.tat_init_(model)" in str(p) for p in problems)
    x_a, x_b = torch.randn(2, 8, width)
    x_b = x_b - (x_a * x_b).sum(1, keepdim=True) / x_a.square().sum(1, keepdim=True) * x_a  # cosine 0
    collapsed = measure_kernel(model, x_a, x_b, modules=[])
    assert collapsed.output_cosine.min().item() > 0.999
    assert collapsed.cosine_gap(slope, depth).min().item() > 0.09  # the prediction is 0.9

    tat_init_(model)
    assert check_initialization(model) == []
    healthy = measure_kernel(model, x_a, x_b, modules=[])
    assert abs(healthy.cosine_gap(slope, depth).mean().item()) < 0.05


def test_check_initialization_layer_kinds():
    torch.manual_seed(10)
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Conv2d(8, 16, 3, padding=1, groups=4),
        nn.ConvTranspose2d(16, 32, 3, padding=1),
        nn.Conv1d(5, 3, 4),  # even kernel: no centre tap, tat_init_(delta=False)
        nn.Linear(6, 12),
        nn.Linear(1, 5),  # one column is always orthogonal: only its scale can be wrong
    )
    assert [p.layer for p in check_initialization(net)] == ["0", "1", "2", "3", "4", "5"]
    for i in (0, 1, 2, 4, 5):
        tat_init_(net[i])
    tat_init_(net[3], delta=False)
    assert check_initialization(net) == []
    # A delta-initialized conv is checked through its centre tap, and flattened otherwise.
    tat_init_(net[0], delta=False)
    assert check_initialization(net) == []

    with torch.no_grad():
        net[4].bias[3] = 0.1
    (problem,) = check_initialization(net)
    assert problem.layer == "4" and "bias is not zero" in problem.problem

    for i, layer in enumerate(net):
        tat_init_(layer, gain=2.0, delta=i != 3)
    problems = check_initialization(net)
    assert len(problems) == 6 and all("scaled by" in p.problem for p in problems)
    assert check_initialization(net, gain=np.float32(2.0)) == []

    with torch.no_grad():
        net[5].weight.zero_()
    assert "is zero" in check_initialization(net, gain=2.0)[0].problem


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_check_initialization_dtypes(dtype):
    torch.manual_seed(11)
    net = tat_init_(nn.Sequential(nn.Linear(64, 256), nn.Conv2d(16, 8, 3)).to(dtype))
    assert check_initialization(net) == []
    assert len(check_initialization(nn.Sequential(nn.Linear(64, 256)).to(dtype))) == 1


def test_check_initialization_errors():
    with pytest.raises(TypeError, match="model"):
        check_initialization(torch.randn(3, 3))
    with pytest.raises(ValueError, match="rtol"):
        check_initialization(nn.Linear(3, 3), rtol=0.0)
    (problem,) = check_initialization(nn.Sequential(nn.LazyLinear(4)))
    assert "lazy" in problem.problem
