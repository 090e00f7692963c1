"""tat_ext.auto: every construct TAT cannot handle is a ValueError naming node, op and why; bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tat_ext.auto import UnsupportedConstruct, derive, tailor

pytestmark = pytest.mark.usefixtures("one_thread")


class _Wrap(nn.Module):
    """conv → ReLU → ``body`` → linear head, so the body sits inside the network."""

    def __init__(self, body):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.body = body
        self.head = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.head(self.body(F.relu(self.conv(x))).flatten(1))


class _Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return F.relu(self.a(x) * self.b(x))


class _Softmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return F.relu(self.conv(F.softmax(x, dim=1)))


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(F.relu(self.conv(x))))


class _Branching(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return F.relu(x)
        return x


class _Unnormalized(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x) + x)


class _DependentSum(nn.Module):
    def forward(self, x):
        return F.relu(0.6 * F.relu(x) + 0.8 * torch.tanh(x))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        seq = x.flatten(2).transpose(1, 2)
        return F.relu(self.attn(seq, seq, seq)[0]).transpose(1, 2).reshape(x.shape)


@pytest.mark.parametrize("body, node, op, why", [
    (nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()), "body.0", "nn.BatchNorm2d", "normalization"),
    (nn.Sequential(nn.GroupNorm(2, 4), nn.ReLU()), "body.0", "nn.GroupNorm", "normalization"),
    (_Product(), "body.mul", "operator.mul", "product of two hidden tensors"),
    (_Softmax(), "body.softmax", "F.softmax", "softmax inside the network"),
    (_Attention(), "body.attn", "nn.MultiheadAttention", "attention"),
    (_Twice(), "body.conv", "nn.Conv2d", "called twice"),
    (nn.Sequential(nn.ConvTranspose2d(4, 4, 3, padding=1), nn.ReLU()), "body.0", "nn.ConvTranspose2d",
     "transposed"),
    (_Unnormalized(), "body.add", "operator.add", "unnormalized sum"),
    (_DependentSum(), "body.add", "operator.add", "not independent"),
], ids=["batchnorm", "groupnorm", "product", "softmax", "attention", "shared-weights", "transposed",
        "unnormalized-sum", "dependent-sum"])
def test_rejected_construct_names_node_op_and_why(body, node, op, why):
    with pytest.raises(UnsupportedConstruct, match=why) as info:
        derive(_Wrap(body), torch.randn(2, 3, 4, 4))
    assert isinstance(info.value, ValueError)
    assert (info.value.node, info.value.op) == (node, op)
    assert str(info.value).startswith(f"{node} ({op}): ")


def test_data_dependent_control_flow():
    with pytest.raises(ValueError, match=r"cannot trace module 'body': data-dependent control flow"):
        derive(_Wrap(_Branching()), torch.randn(2, 3, 4, 4))


def test_mixed_leaky_relu_and_smooth_under_tat():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedConstruct, match=r"^3 \(nn.Tanh\): tanh mixed with Leaky ReLU \(e.g. 1\)"):
        tailor(model, torch.randn(2, 4), eta=0.2)
    tailor(model, torch.randn(2, 4), activation="softplus")  # one family: fine


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.tanh(2.0 * self.a(x)))


def test_smooth_activation_needs_unit_q():
    with pytest.raises(UnsupportedConstruct, match=r"^tanh \(torch.tanh\): q = 4 at this activation's input"):
        tailor(_Scaled(), torch.randn(2, 4))
    tailor(_Scaled(), torch.randn(2, 4), activation="relu", eta=0.1)  # TReLU is homogeneous: any q


def test_pooling_in_the_body_and_dropout_are_warnings():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.1),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2), nn.Softmax(dim=1))
    tailored = tailor(model, torch.randn(2, 3, 4, 4), eta=0.2)
    warnings = tailored.tat.warnings
    assert len(warnings) == 2
    assert warnings[0].startswith("2 (nn.MaxPool2d): pooling inside the body is treated as the identity")
    assert warnings[1].startswith("3 (nn.Dropout): dropout is treated as the identity")
    assert "warning: 2 (nn.MaxPool2d)" in tailored.tat.report()


# -- bad input ----------------------------------------------------------------------------------
_CHAIN = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("call, error, match", [
    (lambda: derive("net", torch.randn(2, 4)), TypeError, "model must be an nn.Module"),
    (lambda: tailor(42, torch.randn(2, 4)), TypeError, "model must be an nn.Module"),
    (lambda: derive(_CHAIN, [1, 2]), TypeError, "example_inputs must be a tensor"),
    (lambda: derive(_CHAIN, torch.randn(2, 5)), ValueError, r"example_inputs: the model failed on inputs of shape"),
    (lambda: tailor(_CHAIN, torch.randn(2, 4), eta=1.0), ValueError, r"eta must be > 0 and < 1"),
    (lambda: tailor(_CHAIN, torch.randn(2, 4), eta=0.9), ValueError,
     r"eta=0.9 is unreachable with depth=2.*needs at least 13 nonlinear layers"),
    (lambda: tailor(_CHAIN, torch.randn(2, 4), activation="swishy"), ValueError, r"activation must be one of"),
    (lambda: tailor(_CHAIN, torch.randn(2, 4), method="EOC"), ValueError, r"method must be one of"),
    (lambda: tailor(_CHAIN, torch.randn(2, 4), rescale_shortcuts=1.0), ValueError, r"rescale_shortcuts must be"),
    (lambda: tailor(nn.Sequential(nn.Linear(4, 2)), torch.randn(2, 4)), ValueError, "no activation found"),
], ids=["derive-module", "tailor-module", "inputs-type", "inputs-shape", "eta-range", "eta-unreachable-chain",
        "activation", "method", "rescale", "linear"])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_unreachable_eta_of_a_branching_net_names_the_largest():
    from tat_ext.models import vanilla_resnet

    model = vanilla_resnet(None, 3, width=1, blocks=(1, 1), shortcut_weight=0.5, activation="relu", fused=False,
                           small_input=True, input_size=8)
    with pytest.raises(ValueError, match=r"eta=0.9 is unreachable.*largest reachable eta is 0.76"):
        tailor(model, torch.randn(2, 3, 8, 8))
