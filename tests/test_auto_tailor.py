"""tat_ext.auto.tailor: zoo equivalence, what it changes, the kernel at init, saving and loading."""
import io

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from tat_ext.auto import derive, tailor
from tat_ext.cmaps import trelu_c_map
from tat_ext.diagnostics import check_initialization, measure_kernel
from tat_ext.models import vanilla_mlp, vanilla_resnet
from tat_ext.models.layers import PerLocationNorm
from tat_ext.nn import TATConv2d, TATLinear, TReLU
from tat_ext.ops import trelu
from tat_ext.transform import solve_trelu

from test_auto_derive import _solvable_eta, _zoo_configs

# Tiny models: a second thread only stalls on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def slopes_of(gm: fx.GraphModule):
    """Every TReLU slope in a tailored graph: fused layers, TReLU modules and trelu calls."""
    found = [m.slope for m in gm.modules() if isinstance(m, (TReLU, TATConv2d, TATLinear))]
    found += [n.kwargs["slope"] for n in gm.graph.nodes if n.op == "call_function" and n.target is trelu]
    return found


@pytest.mark.parametrize("config", list(_zoo_configs()), ids=lambda c: "-".join(map(str, c.values())))
def test_tailor_gives_the_zoo_slope(config):
    """tailor of the unfused ReLU build: every activation gets the slope solved from the zoo's
    hand-written subnet_max_func."""
    size = 8 if config["small_input"] else 32
    kwargs = dict(input_size=size) if config["small_input"] else {}
    model = vanilla_resnet(num_classes=3, width=1, activation="relu", fused=False, **config, **kwargs)
    eta = _solvable_eta(model.subnet_max_func)
    expected = solve_trelu(eta=eta, subnet_max_func=model.subnet_max_func).slope
    tailored = tailor(model, torch.randn(2, 3, size, size), eta=eta)
    slopes = slopes_of(tailored)
    assert len(slopes) == len(tailored.tat.structure.activations)
    assert slopes == pytest.approx([expected] * len(slopes), abs=1e-9)
    assert tailored.tat.activations["leaky_relu"]["slope"] == pytest.approx(expected, abs=1e-9)


def test_tailor_leaves_the_model_alone_unless_inplace():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 4, 4)
    tailored = tailor(model, x, eta=0.2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[1], nn.ReLU) and model[0].in_channels == 3
    assert isinstance(tailored, fx.GraphModule) and tailored(x).shape == (2, 4)
    shared = tailor(model, x, eta=0.2, inplace=True)
    assert shared.get_parameter("2.weight") is model[2].weight  # reused, initialized in place
    assert not torch.equal(model[2].weight, before["2.weight"])


def test_tailor_fuses_and_initializes_a_user_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = nn.Conv2d(16, 16, 3, padding=1)
            self.w = nn.Parameter(torch.randn(16, 16, 3, 3))
            self.fc = nn.Linear(16 * 16, 5)

        def forward(self, x):
            x = F.relu(self.c1(x))
            x = torch.relu(self.c2(x))
            x = F.leaky_relu(F.conv2d(x, self.w, None, padding=1), 0.2)
            return self.fc(x.flatten(1))

    x = torch.randn(3, 3, 4, 4)
    tailored = tailor(Net(), x, eta=0.4)
    assert isinstance(tailored.c1, TATConv2d) and isinstance(tailored.c2, TATConv2d)
    assert tailored.c1.in_channels == 4 and tailored.c1.weight.shape[1] == 4  # normalization's channel
    assert sum(isinstance(m, PerLocationNorm) for m in tailored.modules()) == 1
    assert slopes_of(tailored) == pytest.approx([solve_trelu(3, eta=0.4).slope] * 3, abs=1e-12)
    assert check_initialization(tailored) == []
    w = tailored.w.detach()[:, :, 1, 1]
    torch.testing.assert_close(w @ w.T, torch.eye(16), atol=1e-5, rtol=0)
    assert tailored.c1.bias.abs().max() == 0
    # Tailoring the tailored model normalizes nothing twice and keeps the slope.
    again = tailor(tailored, x, eta=0.4)
    assert sum(isinstance(m, PerLocationNorm) for m in again.modules()) == 1
    assert any("already normalized" in line for line in again.tat.changes)
    assert slopes_of(again) == pytest.approx(slopes_of(tailored), abs=1e-12)


def test_tailor_without_fusion_uses_trelu_modules():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.1), nn.Linear(8, 2))
    tailored = tailor(model, torch.randn(2, 4), eta=0.1, fuse=False)
    assert isinstance(getattr(tailored, "1"), TReLU) and isinstance(getattr(tailored, "3"), TReLU)
    assert type(getattr(tailored, "0")) is nn.Linear


def test_tailor_smooth_and_dks():
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    x = torch.randn(5, 4)
    tat = tailor(model, x)
    assert set(tat.tat.activations) == {"tanh"} and tat.tat.eta is None
    dks = tailor(model, x, method="DKS", activation="softplus", dks_params={"c_slope_1_target": 2.0})
    assert set(dks.tat.activations) == {"softplus"}
    for gm in (tat, dks):
        assert torch.isfinite(gm(x)).all()


def test_rescale_shortcuts_rewrites_unnormalized_sums():
    class Block(nn.Module):  # torchvision's BasicBlock without its batch norms
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            identity = x
            out = self.conv2(F.relu(self.conv1(x)))
            out += identity
            return F.relu(out)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(), Block())
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"unnormalized sum.*rescale_shortcuts"):
        tailor(model, x, eta=0.3)
    tailored = tailor(model, x, eta=0.3, rescale_shortcuts=0.6)
    w2 = 0.36

    def expected(c, r):
        # The blocks' residual branches (conv1 → relu → conv2) and shortcuts share the activation
        # before them; the branch alone, from the last conv or sum, is r∘r (docs/math.md).
        x0 = c
        x = r(c)
        x = r(w2 * x + (1 - w2) * r(x))
        x = r(w2 * x + (1 - w2) * r(x))
        return max(x, r(r(x0)))
    for slope in (0.0, 0.5):
        r = lambda c, s=slope: trelu_c_map(c, s)  # noqa: E731
        assert tailored.tat.structure.subnet_max_func(0.0, r) == pytest.approx(expected(0.0, r), abs=1e-14)
    for x, r in ((1.0, lambda y: 1.5 * y), (0.0, lambda y: 0.1 + y)):  # DKS and TAT conventions
        assert tailored.tat.structure.subnet_max_func(x, r) == pytest.approx(expected(x, r), rel=1e-14)
    assert sum("0.6·shortcut" in line for line in tailored.tat.changes) == 2


def test_kernel_at_init_matches_eta():
    """A tailored width-512 MLP of 16 ReLU layers: orthogonal inputs (c = 0 after normalization)
    come out of the last activation with cosine eta (C_f(0) = η, the derived prediction)."""
    torch.manual_seed(0)
    layers = [nn.Linear(64, 512), nn.ReLU()]
    for _ in range(15):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    tailored = tailor(nn.Sequential(*layers, nn.Linear(512, 10)), torch.randn(2, 64), eta=0.9)
    assert tailored.tat.structure.depth == 16
    # Pairs with x·y = −1: the appended homogeneous coordinate (1) makes them orthogonal.
    g = torch.Generator().manual_seed(1)
    x_a = torch.randn(8, 64, generator=g)
    z = torch.randn(8, 64, generator=g)
    norm2 = (x_a * x_a).sum(1, keepdim=True)
    x_b = z - ((z * x_a).sum(1, keepdim=True) + 1.0) / norm2 * x_a
    last = [name for name, m in tailored.named_modules() if isinstance(m, TATLinear)][-1]
    trace = measure_kernel(tailored, x_a, x_b, modules=[next(n for n, m in tailored.named_modules()
                                                             if isinstance(m, PerLocationNorm)), last])
    assert trace.cosine[1].abs().max() < 1e-5  # c = 0 after normalization
    # Finite width scatters single pairs by a few hundredths; their mean estimates C_f(0).
    assert abs(trace.cosine[2].mean().item() - 0.9) < 0.03
    assert (trace.cosine[2] - 0.9).abs().max() < 0.06
    assert abs(trace.q_a[2].mean().item() - 1.0) < 0.15  # TReLU keeps q = 1 (in the mean over examples)


def test_save_and_load():
    model = vanilla_mlp(4, 8, 3, activation="relu", fused=False)
    x = torch.randn(2, 64)
    tailored = tailor(model, x, eta=0.4)
    buffer = io.BytesIO()
    torch.save(tailored, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x), tailored(x), rtol=0, atol=0)
    assert loaded.tat.activations == tailored.tat.activations
    fresh = tailor(model, x, eta=0.4)
    fresh.load_state_dict(tailored.state_dict())
    torch.testing.assert_close(fresh(x), tailored(x), rtol=0, atol=0)
    assert derive(loaded, x).depth == 4


@pytest.mark.parametrize("shortcut_weight", [0.0, 0.5])
def test_tailor_of_a_fused_zoo_model_keeps_its_slope(shortcut_weight):
    """The zoo's fused build (TATConv2d/TReLU layers) re-tailored: same slope, same parameters."""
    model = vanilla_resnet(50, 3, width=1, shortcut_weight=shortcut_weight, small_input=True, input_size=8)
    x = torch.randn(2, 3, 8, 8)
    tailored = tailor(model, x, init=False)
    slopes = slopes_of(tailored)
    assert slopes == pytest.approx([model.activation.slope] * len(slopes), abs=1e-9)
    torch.testing.assert_close(tailored(x), model(x))  # init=False: the same function
