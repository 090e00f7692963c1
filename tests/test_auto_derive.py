"""tat_ext.auto.derive: the derived subnet_max_func reproduces the zoo's hand-written one."""

import pytest
import torch
from torch import nn

from tat_ext.auto import derive
from tat_ext.cmaps import trelu_c_map
from tat_ext.models import STANDARD_DEPTHS, vanilla_mlp, vanilla_resnet
from tat_ext.transform import solve_trelu

# Tiny models: a second thread only stalls on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")

_ETAS = (0.9, 0.75, 0.5, 0.3)


def _solvable_eta(fn):
    """The first of 0.9, 0.75, 0.5, 0.3 that the architecture reaches (small rescaled nets cannot reach 0.9)."""
    reachable = fn(0.0, lambda c: trelu_c_map(c, 0.0))
    return next(eta for eta in _ETAS if eta < reachable)


def _assert_same_structure(derived, hand_written):
    # The functions agree at several slopes, for the three r_fn conventions (TReLU, DKS, TAT) ...
    for slope in (0.0, 0.3, 0.7, 0.95):
        r = lambda c, s=slope: trelu_c_map(c, s)  # noqa: E731
        assert derived(0.0, r) == pytest.approx(hand_written(0.0, r), abs=1e-12)
    assert derived(1.0, lambda y: 1.01 * y) == pytest.approx(hand_written(1.0, lambda y: 1.01 * y), rel=1e-12)
    assert derived(0.0, lambda y: 0.01 + y) == pytest.approx(hand_written(0.0, lambda y: 0.01 + y), rel=1e-12)
    # ... and the solved slope is the same to 1e-9.
    eta = _solvable_eta(hand_written)
    assert solve_trelu(eta=eta, subnet_max_func=derived).slope == pytest.approx(
        solve_trelu(eta=eta, subnet_max_func=hand_written).slope, abs=1e-9)


def _zoo_configs():
    for depth in STANDARD_DEPTHS:
        for w in (0.0, 0.5, 0.8):
            for small in (False, True):
                yield dict(depth=depth, shortcut_weight=w, small_input=small)
    yield dict(depth=None, blocks=(1, 1, 1), shortcut_weight=0.5, small_input=True)
    yield dict(depth=None, blocks=(1, 1, 1), shortcut_weight=0.5, small_input=False)
    yield dict(depth=None, blocks=(2, 1), bottleneck=False, shortcut_weight=0.8, small_input=True)
    # One block with a large shortcut weight: the single residual branch is the maximal subnetwork
    # for the DKS and TAT conventions (projection, and identity shortcut).
    yield dict(depth=None, blocks=(1,), shortcut_weight=0.9, small_input=True)
    yield dict(depth=None, blocks=(1,), bottleneck=False, shortcut_weight=0.9, small_input=True)


@pytest.mark.parametrize("config", list(_zoo_configs()), ids=lambda c: "-".join(map(str, c.values())))
def test_derive_reproduces_zoo_resnet(config):
    torch.manual_seed(0)
    size = 8 if config["small_input"] else 32
    kwargs = dict(input_size=size) if config["small_input"] else {}
    model = vanilla_resnet(num_classes=3, width=1, activation="relu", fused=False, **config, **kwargs)
    structure = derive(model, torch.randn(2, 3, size, size))
    _assert_same_structure(structure.subnet_max_func, model.subnet_max_func)
    plan = model.plan
    if config["shortcut_weight"] == 0.0:
        assert structure.is_chain and structure.depth == plan.depth - 1
    assert structure.depth == (3 if plan.bottleneck else 2) * sum(plan.blocks) + 1


@pytest.mark.parametrize("fused", [False, True])
def test_derive_reproduces_zoo_mlp(fused):
    model = vanilla_mlp(20, 8, 10, activation="relu" if not fused else "trelu", fused=fused)
    structure = derive(model, torch.randn(4, 64))
    _assert_same_structure(structure.subnet_max_func, model.subnet_max_func)
    assert structure.depth == 20 and structure.is_chain and len(structure.activations) == 20


def test_derive_on_fused_trelu_resnet():
    """The fused build (TATConv2d/TReLU leaves) has the same structure as the unfused one."""
    model = vanilla_resnet(50, 3, width=1, shortcut_weight=0.5, small_input=True, input_size=8)
    structure = derive(model, torch.randn(2, 3, 8, 8))
    _assert_same_structure(structure.subnet_max_func, model.subnet_max_func)
    assert set(structure.activation_kinds) == {"trelu"}


@pytest.mark.parametrize("layers", [3, 13, 40])
def test_sequential_chain_is_solve_trelu(layers):
    body = []
    for i in range(layers):
        body += [nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*body, nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    structure = derive(model, torch.randn(2, 3, 6, 6))
    assert structure.depth == layers and structure.is_chain
    eta = 0.5 if layers < 13 else 0.9
    assert solve_trelu(eta=eta, subnet_max_func=structure.subnet_max_func).slope == pytest.approx(
        solve_trelu(layers, eta=eta).slope, abs=1e-12)


def test_table_lists_every_node():
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    structure = derive(model, torch.randn(3, 5))
    table = structure.table()
    for name in ("0", "1", "2"):
        assert any(line.startswith(name + " ") for line in table.splitlines())
    assert "c ← r(c) [tanh]" in table and "1 nonlinear layers" in table
    assert structure.activations == ("1",)
    assert model.training  # derive leaves the model's mode alone


def test_channel_concatenation_mixes_by_channel_count():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 12, 1)
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            both = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
            return self.fc(torch.relu(both).mean(dim=(2, 3)))

    structure = derive(Concat(), torch.randn(2, 3, 4, 4))
    assert structure.depth == 2 and not structure.is_chain
    for slope in (0.0, 0.6):
        r = lambda c, s=slope: trelu_c_map(c, s)  # noqa: E731
        for x in (0.0, 0.4):
            assert structure.subnet_max_func(x, r) == pytest.approx(r((4 * r(x) + 12 * x) / 16), abs=1e-15)
