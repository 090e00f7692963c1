"""tat_ext.optim.KFAC against a brute-force computation in float64: the factors, the π-split damping
and the preconditioned update formed explicitly (and, for convs, the solve against the explicit
Kronecker matrix T·(A_d ⊗ G_d)); one test per schedule setting; state_dict; bad input."""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tat_ext.models.layers import ActConv2d, ActLinear, EagerTReLU
from tat_ext.nn import TATConv2d, TATLinear
from tat_ext.optim import KFAC, CurvatureError, classification_step
from tat_ext.optim.factors import Factors
from tat_ext.optim.sampling import sample_labels, uniforms

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64
EXACT = dict(fisher="empirical", curvature_ema=0.0, inverse_update_period=1, burnin_steps=0, momentum=0.0,
             norm_constraint=None)
LR, DAMPING = 0.1, 1e-2


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _lrelu(slope, scale):
    return lambda z: scale * F.leaky_relu(z, slope)


# -- brute force: explicit per-example gradients at the pre-activations ------------------------------


def _patches(x, k, stride, pad):
    """Every k×k patch of x (zero padding), [N, T, C·k·k], by explicit slicing."""
    xp = F.pad(x, (pad,) * 4)
    n, _, h, w = xp.shape
    rows = [xp[:, :, i:i + k, j:j + k].reshape(n, -1)
            for i in range(0, h - k + 1, stride) for j in range(0, w - k + 1, stride)]
    return torch.stack(rows, dim=1)


def _brute_stats(spec, x, y, wrong_g=False, grad_labels=None):
    """Per layer (ā rows [N·T, dim A], g rows [N·T, out], T, ∇W̄) for a chain ``spec`` of
    (kind, module, activation), each layer computed by hand as z = W·a + b, then φ(z); g is the
    per-example gradient at z for labels ``y``. ∇W̄ is the mean loss's gradient for
    ``grad_labels`` (default ``y``) taken by autograd through the modules themselves (an input of
    K-FAC, not part of it). ``wrong_g`` takes g from φ(z), the module output: what K-FAC must NOT do."""
    n = x.shape[0]
    h, records = x, []
    for kind, m, act in spec:
        if kind == "conv":
            k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
            a = _patches(h, k, s, p)                                     # [N, T, C·k·k]
            t = a.shape[1]
            z = a @ m.weight.reshape(m.out_channels, -1).T + (m.bias if m.bias is not None else 0)
            side = int(math.isqrt(t))
            shape = lambda v: v.reshape(n, side, side, -1).permute(0, 3, 1, 2)  # noqa: E731
        else:
            if h.dim() > 2:
                h = h.flatten(1)
            a, t = h.unsqueeze(1), 1
            z = a @ m.weight.T + (m.bias if m.bias is not None else 0)
            shape = lambda v: v.reshape(n, -1)  # noqa: E731
        out = act(z) if act is not None else z
        abar = a.detach().reshape(n * t, -1)
        if m.bias is not None:
            abar = torch.cat([abar, torch.ones(n * t, 1, dtype=D)], dim=1)
        records.append((abar, out if wrong_g else z, t))
        h = shape(out)
    loss = F.cross_entropy(h, y, reduction="sum")     # sum: ∂/∂z_i is the per-example gradient
    gs = torch.autograd.grad(loss, [r[1] for r in records])
    params = [p for _, m, _ in spec for p in (m.weight, m.bias) if p is not None]
    mean = F.cross_entropy(_forward(spec, x), y if grad_labels is None else grad_labels)
    grads = iter(torch.autograd.grad(mean, params))
    result = []
    for (abar, _, t), g, (_, m, _) in zip(records, gs, spec):
        grad = next(grads).reshape(m.weight.shape[0], -1)
        if m.bias is not None:
            grad = torch.cat([grad, next(grads).reshape(-1, 1)], dim=1)
        result.append((abar, g.reshape(n * t, -1).detach(), t, grad))
    return result


def _forward(spec, x):
    """The chain's output through the modules themselves (TATLinear etc. apply their activation)."""
    h = x
    for kind, m, act in spec:
        if kind == "linear" and h.dim() > 2:
            h = h.flatten(1)
        h = m(h)
        if act is not None and not isinstance(m, (TATLinear, TATConv2d, ActLinear, ActConv2d)):
            h = act(h)
    return h


def _damped(abar, g, t, damping):
    """A_d, G_d from explicitly formed A, G and π."""
    rows = abar.shape[0]
    a, gg = abar.T @ abar / rows, g.T @ g / rows
    pi = math.sqrt((a.trace() / a.shape[0]) / (gg.trace() / gg.shape[0]))
    r = math.sqrt(damping / t)
    return a + pi * r * torch.eye(a.shape[0], dtype=D), gg + r / pi * torch.eye(gg.shape[0], dtype=D)


def _brute_update(stats, lr=LR, damping=DAMPING):
    """−lr·(1/T)·G_d⁻¹ ∇W̄ A_d⁻¹ per layer, from explicitly formed A, G, π."""
    updates = []
    for abar, g, t, grad in stats:
        a_d, g_d = _damped(abar, g, t, damping)
        updates.append(-lr * torch.linalg.solve(g_d, grad) @ torch.linalg.inv(a_d) / t)
    return updates


def _kron_update(stats, lr=LR, damping=DAMPING):
    """The same update as a solve against the explicit (dim A·out)² matrix T·(A_d ⊗ G_d)."""
    updates = []
    for abar, g, t, grad in stats:
        block = t * torch.kron(*_damped(abar, g, t, damping))
        vec = grad.T.reshape(-1)                          # column-major vec(∇W̄)
        updates.append(-lr * torch.linalg.solve(block, vec).reshape(grad.shape[1], grad.shape[0]).T)
    return updates


def _flat(m):
    """A layer's [W b] as one matrix [out, dim A]."""
    w = m.weight.detach().reshape(m.weight.shape[0], -1)
    return torch.cat([w, m.bias.detach().reshape(-1, 1)], dim=1) if m.bias is not None else w


def _kfac_update(model, layers, x, y, **settings):
    """One KFAC step on (x, y); the change of each layer's [W b]."""
    opt = KFAC(model, LR, damping=DAMPING, **{**EXACT, **settings})
    before = [_flat(m).clone() for m in layers]
    _train_step(model, opt, x, y)
    return [_flat(m) - b for m, b in zip(layers, before)], opt


def _train_step(model, opt, x, y):
    classification_step(model, opt, x, y)   # forward, curvature_backward, backward, step, zero_grad


def _data(n=16, shape=(5,), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g)


def _mlp(seed=0, slope=0.3):
    torch.manual_seed(seed)
    return nn.Sequential(TATLinear(5, 4, slope=slope), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _mlp_spec(model):
    tat = model[0]
    return [("linear", tat, _lrelu(tat.slope, tat.scale)), ("linear", model[1], torch.tanh),
            ("linear", model[3], None)]


# -- exactness ----------------------------------------------------------------------------------------


def test_linear_and_tatlinear_update_equals_brute_force():
    model = _mlp()
    x, y = _data()
    expected = _brute_update(_brute_stats(_mlp_spec(model), x, y))
    got, opt = _kfac_update(model, [model[0], model[1], model[3]], x, y)
    assert opt.preconditioned_modules() == ["0", "1", "3"]
    for g, e in zip(got, expected):
        assert _rel(g, e) < 1e-10


@pytest.mark.parametrize("kind", ["tat", "act"])
def test_output_gradient_is_not_g(kind):
    """The module output's gradient differs from the pre-activation's; the update must use the latter
    (this test fails if K-FAC takes g from a TATLinear's/ActLinear's output)."""
    torch.manual_seed(1)
    act = _lrelu(0.2, 1.3)
    first = TATLinear(5, 4, slope=0.2, scale=1.3) if kind == "tat" else ActLinear(5, 4, activation=act)
    model = nn.Sequential(first, nn.Linear(4, 3)).double()
    x, y = _data(seed=1)
    spec = [("linear", model[0], act), ("linear", model[1], None)]
    right = _brute_update(_brute_stats(spec, x, y))[0]
    wrong = _brute_update(_brute_stats(spec, x, y, wrong_g=True))[0]
    got = _kfac_update(model, [model[0], model[1]], x, y)[0][0]
    assert _rel(wrong, right) > 1e-3          # the two choices are distinguishable here
    assert _rel(got, right) < 1e-10


def _conv_net(layer, stride, side):
    out_side = (side - 1) // stride + 1
    return nn.Sequential(layer, nn.Flatten(), nn.Linear(3 * out_side ** 2, 4)).double()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", ["conv", "tat", "act"])
def test_3x3_conv_matches_the_explicit_kronecker_solve(stride, kind):
    torch.manual_seed(2 + stride)
    act = _lrelu(0.25, 1.2) if kind != "conv" else None
    args = (2, 3, 3, stride, 1)
    layer = {"conv": lambda: nn.Conv2d(*args), "tat": lambda: TATConv2d(*args, slope=0.25, scale=1.2),
             "act": lambda: ActConv2d(*args, activation=EagerTReLU(0.25, 1.2))}[kind]()
    model = _conv_net(layer, stride, 5)
    x, y = _data(8, (2, 5, 5), 4, seed=stride)
    stats = _brute_stats([("conv", model[0], act), ("linear", model[2], None)], x, y)
    assert stats[0][2] == (9 if stride == 2 else 25)  # T
    expected = _kron_update(stats)
    got = _kfac_update(model, [model[0], model[2]], x, y)[0]
    for g, e in zip(got, expected):
        assert _rel(g, e) < 1e-10


def test_1x1_conv_on_1x1_inputs_is_the_linear_layer():
    torch.manual_seed(4)
    linear = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    conv = nn.Sequential(nn.Conv2d(5, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        conv[0].weight.copy_(linear[0].weight.reshape(4, 5, 1, 1))
        conv[0].bias.copy_(linear[0].bias)
        conv[3].load_state_dict(linear[2].state_dict())
    x, y = _data()
    a = _kfac_update(linear, [linear[0], linear[2]], x, y)[0]
    b = _kfac_update(conv, [conv[0], conv[3]], x.reshape(16, 5, 1, 1), y)[0]
    for u, v in zip(a, b):
        assert _rel(v, u) < 1e-12


def test_actconv2d_equals_conv2d_then_the_same_activation():
    """An EOC layer (ActConv2d with ReLU, as the zoo builds it) = nn.Conv2d followed by nn.ReLU."""
    torch.manual_seed(5)
    fused = _conv_net(ActConv2d(2, 3, 3, 1, 1, activation=F.relu), 1, 4)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)).double()
    plain[0].load_state_dict(fused[0].state_dict())
    plain[3].load_state_dict(fused[2].state_dict())
    x, y = _data(8, (2, 4, 4), 4, seed=5)
    a = _kfac_update(fused, [fused[0], fused[2]], x, y, fisher="mc")[0]
    b = _kfac_update(plain, [plain[0], plain[3]], x, y, fisher="mc")[0]
    for u, v in zip(a, b):
        assert _rel(u, v) < 1e-12


def test_bias_free_layer_has_no_homogeneous_coordinate():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = _data()
    expected = _brute_update(_brute_stats([("linear", model[0], torch.tanh), ("linear", model[2], None)], x, y))
    got, opt = _kfac_update(model, [model[0], model[2]], x, y)
    assert opt.factors[0].a.shape == (5, 5)
    for g, e in zip(got, expected):
        assert _rel(g, e) < 1e-10


# -- each setting changes the update as specified -----------------------------------------------------


def _two_batches():
    return _data(seed=10), _data(seed=11)


def test_norm_constraint_scales_the_update():
    (x, y), _ = _two_batches()
    free = _kfac_update(_mlp(), [], x, y)[1]
    model = _mlp()
    layers = [model[0], model[1], model[3]]
    stats = _brute_stats(_mlp_spec(model), x, y)
    p = [-u / LR for u in _brute_update(stats)]
    inner = sum((pi * s[3]).sum().item() for pi, s in zip(p, stats))
    c = 1e-3 * LR ** 2 * inner                       # active: scale sqrt(1e-3)
    got = _kfac_update(model, layers, x, y, norm_constraint=c)[0]
    for g, pi in zip(got, p):
        assert _rel(g, -LR * math.sqrt(c / (LR ** 2 * inner)) * pi) < 1e-10
    model = _mlp()
    loose = _kfac_update(model, [model[0], model[1], model[3]], x, y, norm_constraint=10 * c / 1e-3)[0]
    for g, pi in zip(loose, p):                     # inactive: no scaling
        assert _rel(g, -LR * pi) < 1e-10
    assert free.norm_constraint is None


def test_momentum_adds_the_previous_update():
    (x1, y1), (x2, y2) = _two_batches()
    model = _mlp()
    layers = [model[0], model[1], model[3]]
    opt = KFAC(model, LR, damping=DAMPING, **{**EXACT, "momentum": 0.7})
    w0 = [_flat(m).clone() for m in layers]
    _train_step(model, opt, x1, y1)
    w1 = [_flat(m).clone() for m in layers]
    second = _brute_update(_brute_stats(_mlp_spec(model), x2, y2))
    _train_step(model, opt, x2, y2)
    for m, a, b, e in zip(layers, w0, w1, second):
        assert _rel(_flat(m) - b, e + 0.7 * (b - a)) < 1e-10


def test_moving_average_is_bias_corrected():
    (x1, y1), (x2, y2) = _two_batches()
    model = _mlp()
    opt = KFAC(model, LR, damping=DAMPING, **{**EXACT, "curvature_ema": 0.9})
    s1 = _brute_stats(_mlp_spec(model), x1, y1)
    _train_step(model, opt, x1, y1)
    a1 = s1[0][0].T @ s1[0][0] / 16
    assert _rel(opt.factors[0].a, a1) < 1e-12        # not 0.1·A₁: the first average is A₁ itself
    s2 = _brute_stats(_mlp_spec(model), x2, y2)
    _train_step(model, opt, x2, y2)
    a2 = s2[0][0].T @ s2[0][0] / 16
    g1, g2 = (s[0][1].T @ s[0][1] / 16 for s in (s1, s2))
    assert _rel(opt.factors[0].a, (0.9 * a1 + a2) / 1.9) < 1e-12
    assert _rel(opt.factors[0].g, (0.9 * g1 + g2) / 1.9) < 1e-12


def test_burnin_only_accumulates_then_inverts():
    batches = [_data(seed=s) for s in (20, 21, 22)]
    model = _mlp()
    layers = [model[0], model[1], model[3]]
    opt = KFAC(model, LR, damping=DAMPING, **{**EXACT, "burnin_steps": 2, "curvature_ema": 0.5})
    w0 = [_flat(m).clone() for m in layers]
    stats = []
    for x, y in batches[:2]:
        stats.append(_brute_stats(_mlp_spec(model), x, y))
        _train_step(model, opt, x, y)
        for m, w in zip(layers, w0):
            assert torch.equal(_flat(m), w)           # no update during the burn-in
    assert opt.factors[0].a_inverse is None
    stats.append(_brute_stats(_mlp_spec(model), *batches[2]))
    _train_step(model, opt, *batches[2])
    # the first update uses the average of all three batches, weights 0.25, 0.5, 1 (bias-corrected)
    weights = [0.25, 0.5, 1.0]
    for i, (m, w) in enumerate(zip(layers, w0)):
        a = sum(wt * s[i][0].T @ s[i][0] / 16 for wt, s in zip(weights, stats)) / 1.75
        g = sum(wt * s[i][1].T @ s[i][1] / 16 for wt, s in zip(weights, stats)) / 1.75
        pi = math.sqrt((a.trace() / a.shape[0]) / (g.trace() / g.shape[0]))
        r = math.sqrt(DAMPING)
        expected = -LR * torch.linalg.inv(g + r / pi * torch.eye(g.shape[0], dtype=D)) @ stats[2][i][3] \
            @ torch.linalg.inv(a + pi * r * torch.eye(a.shape[0], dtype=D))
        assert _rel(_flat(m) - w, expected) < 1e-10


def test_curvature_period_skips_statistics():
    batches = [_data(seed=s) for s in (30, 31, 32)]
    model = _mlp()
    opt = KFAC(model, LR, damping=DAMPING, **{**EXACT, "curvature_update_period": 2, "curvature_ema": 0.5})
    assert [opt.is_curvature_step(k) for k in range(4)] == [True, False, True, False]
    _train_step(model, opt, *batches[0])
    a_first = opt.factors[0].a.clone()
    _train_step(model, opt, *batches[1])              # step 1: not a curvature step
    assert torch.equal(opt.factors[0].a, a_first) and opt.factors[0].weight == 1.0
    s = _brute_stats(_mlp_spec(model), *batches[2])
    _train_step(model, opt, *batches[2])
    assert _rel(opt.factors[0].a, (0.5 * a_first + s[0][0].T @ s[0][0] / 16) / 1.5) < 1e-12


def test_inverse_period_keeps_the_old_inverses():
    batches = [_data(seed=s) for s in (40, 41)]
    model = _mlp()
    layers = [model[0], model[1], model[3]]
    opt = KFAC(model, LR, damping=DAMPING, **{**EXACT, "inverse_update_period": 2})
    _train_step(model, opt, *batches[0])
    inverses = [(f.a_inverse.clone(), f.g_inverse.clone()) for f in opt.factors]
    w1 = [_flat(m).clone() for m in layers]
    second = _brute_stats(_mlp_spec(model), *batches[1])
    _train_step(model, opt, *batches[1])
    for m, w, (a_inv, g_inv), s, f in zip(layers, w1, inverses, second, opt.factors):
        assert torch.equal(f.a_inverse, a_inv)        # not recomputed at step 1 ...
        assert _rel(_flat(m) - w, -LR * g_inv @ s[3] @ a_inv) < 1e-10  # ... and used with the new gradient
    assert _rel(opt.factors[0].a, second[0][0].T @ second[0][0] / 16) < 1e-12  # curvature did update


# -- MC Fisher, first-order parameters, state_dict ----------------------------------------------------


def test_mc_labels_depend_only_on_seed_step_and_index():
    logits = torch.randn(6, 5, dtype=D)
    index = torch.arange(6)
    full = sample_labels(logits, 3, 7, index)
    halves = torch.cat([sample_labels(logits[::2], 3, 7, index[::2]), sample_labels(logits[1::2], 3, 7, index[1::2])])
    assert torch.equal(full[torch.cat([index[::2], index[1::2]])], halves)
    assert not torch.equal(uniforms(3, 7, index), uniforms(3, 8, index))
    # the draw follows softmax: 20,000 draws of one row
    probs = torch.softmax(torch.tensor([[0.0, 1.0, 2.0]], dtype=D), 1)
    draws = sample_labels(probs.log().expand(20000, 3), 0, 0, torch.arange(20000))
    freq = torch.bincount(draws, minlength=3).double() / 20000
    assert (freq - probs[0]).abs().max() < 0.015


def test_mc_fisher_uses_sampled_labels():
    model = _mlp()
    x, y = _data()
    layers = [model[0], model[1], model[3]]
    got = _kfac_update(model, layers, x, y, fisher="mc", seed=5)[0]
    model = _mlp()
    sampled = sample_labels(model(x), 5, 0, torch.arange(16))
    # G from the sampled labels, ∇ from the training labels
    expected = _brute_update(_brute_stats(_mlp_spec(model), x, sampled, grad_labels=y))
    for g, e in zip(got, expected):
        assert _rel(g, e) < 1e-10


def test_first_order_parameters_and_groups():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)).double()
    opt = KFAC(model, LR, **{**EXACT, "momentum": 0.0}, first_order={"lr": 0.5})
    assert [g["kind"] for g in opt.param_groups] == ["kfac", "first_order"]
    assert opt.param_groups[1]["lr"] == 0.5
    before = model[1].weight.detach().clone()
    x, y = _data()
    logits = model(x)
    F.cross_entropy(logits, y).backward()
    grad = model[1].weight.grad.clone()
    opt.step()
    assert _rel(model[1].weight.detach() - before, -0.5 * grad) < 1e-14
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert [g["lr"] for g in opt.param_groups] == [LR * 0.5, 0.25]
    assert sched.get_last_lr() == [LR * 0.5, 0.25]


def test_state_dict_resume_is_bitwise():
    batches = [_data(seed=s) for s in range(50, 56)]
    settings = dict(fisher="mc", burnin_steps=1, inverse_update_period=2, curvature_update_period=2,
                    weight_decay=1e-3)
    model = _mlp()
    opt = KFAC(model, LR, **settings)
    for x, y in batches:
        _train_step(model, opt, x, y)
    other = _mlp()
    first = KFAC(other, LR, **settings)
    for x, y in batches[:3]:
        _train_step(other, first, x, y)
    saved = {"model": {k: v.clone() for k, v in other.state_dict().items()}, "opt": first.state_dict()}
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model = _mlp(seed=99)
    resumed_model.load_state_dict(saved["model"])
    resumed = KFAC(resumed_model, LR, **settings)
    resumed.load_state_dict(saved["opt"])
    assert resumed.steps == 3
    for x, y in batches[3:]:
        _train_step(resumed_model, resumed, x, y)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(damping=0.0), "damping"),
    (dict(norm_constraint=0.0), "norm_constraint"), (dict(norm_constraint=-1.0), "norm_constraint"),
    (dict(curvature_ema=1.0), "curvature_ema"), (dict(curvature_ema=-0.1), "curvature_ema"),
    (dict(curvature_update_period=0), "curvature_update_period"),
    (dict(inverse_update_period=0), "inverse_update_period"), (dict(burnin_steps=-1), "burnin_steps"),
    (dict(fisher="true"), "fisher"), (dict(momentum=-0.5), "momentum"), (dict(weight_decay=-1.0), "weight_decay"),
    (dict(first_order={"betas": 1}), "first_order"),
])
def test_bad_settings_name_the_argument(kwargs, name):
    kwargs = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=name):
        KFAC(_mlp(), **kwargs)


def test_bad_models():
    with pytest.raises(ValueError, match="no layer"):
        KFAC(nn.Sequential(nn.LayerNorm(3), nn.Conv2d(4, 4, 3, groups=2)), 0.1)
    shared = nn.Linear(3, 3)
    other = nn.Linear(3, 3)
    other.weight = shared.weight
    with pytest.raises(ValueError, match=r"shared between 0\.weight and 1\.weight"):
        KFAC(nn.Sequential(shared, other), 0.1)
    with pytest.raises(TypeError, match="model"):
        KFAC("model", 0.1)


def test_misuse_gives_clear_errors():
    model = _mlp()
    x, y = _data()
    opt = KFAC(model, 0.1)                             # fisher="mc"
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="curvature_backward"):
        opt.step()
    opt = KFAC(_mlp(), 0.1, fisher="empirical")
    with pytest.raises(RuntimeError, match="no layer statistics"):
        opt.step()
    with pytest.raises(ValueError, match="logits"):
        KFAC(_mlp(), 0.1).curvature_backward(torch.zeros(3))
    with pytest.raises(ValueError, match="not a KFAC state_dict"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), 0.1).state_dict())
    factors = Factors.zeros(3, 2, D, torch.device("cpu"))
    factors.update(torch.full((3, 3), math.nan, dtype=D), torch.eye(2, dtype=D), 0.0, 1)
    with pytest.raises(CurvatureError, match="not positive definite"):  # the train loop reports: diverged
        factors.invert(1e-3)


def test_factor_above_max_factor_dim_is_diagonal():
    """A layer with dim A > max_factor_dim keeps diag(A): the update is G_d⁻¹ ∇W̄ diag(A_d)⁻¹."""
    model = _mlp()
    x, y = _data()
    stats = _brute_stats(_mlp_spec(model), x, y)
    got, opt = _kfac_update(model, [model[0], model[1], model[3]], x, y, max_factor_dim=5)
    # dims A: 6, 5, 7 and G: 4, 6, 3
    assert [f.a_sum.dim() for f in opt.factors] == [1, 2, 1] and [f.g_sum.dim() for f in opt.factors] == [2, 1, 2]
    for i in (0, 2):
        abar, g, _, grad = stats[i]
        a, gg = (abar.square().sum(0) / 16), g.T @ g / 16
        pi = math.sqrt((a.sum() / a.shape[0]) / (gg.trace() / gg.shape[0]))
        r = math.sqrt(DAMPING)
        expected = -LR * torch.linalg.inv(gg + r / pi * torch.eye(gg.shape[0], dtype=D)) @ grad / (a + pi * r)
        assert _rel(got[i], expected) < 1e-10


def test_compiled_model_matches_eager():
    """Under torch.compile the hooks run eagerly (graph breaks), so the steps equal the eager ones."""
    torch.manual_seed(8)
    base = nn.Sequential(TATLinear(8, 16, slope=0.3), ActLinear(16, 16, activation=torch.tanh), nn.Linear(16, 4))
    x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
    results = []
    for compiled in (False, True):
        model = copy.deepcopy(base)
        opt = KFAC(model, 1e-2, burnin_steps=0, inverse_update_period=1)
        forward = torch.compile(model) if compiled else model
        for _ in range(3):
            _train_step(forward, opt, x, y)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_factors_are_fp32_under_bfloat16_autocast():
    torch.manual_seed(9)
    model = nn.Sequential(TATLinear(5, 4, slope=0.3), nn.Linear(4, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    opt = KFAC(model, 0.1, **EXACT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    opt.step()
    rows = torch.cat([x, torch.ones(16, 1)], dim=1)
    assert opt.factors[0].a.dtype == torch.float32
    # ā is the bf16-autocast input, here fp32 x itself: A to fp32 accuracy, not bf16's 1e-2
    assert _rel(opt.factors[0].a, rows.T @ rows / 16) < 1e-6
