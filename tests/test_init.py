"""Scaled uniform orthogonal init: norm preservation checked through the real layers' ops."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tat_ext.init import scaled_uniform_orthogonal_, tat_init_

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _assert_scaled_orthonormal(matrix: torch.Tensor, scale: float, atol: float = 1e-5) -> None:
    """Columns (out >= in) or rows (out < in) of ``matrix`` are orthonormal up to ``scale``."""
    m = matrix.double()
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=m.device)
    torch.testing.assert_close(gram, scale**2 * eye, atol=atol * scale**2, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dim,in_dim", [(64, 16), (16, 64), (32, 32)])
@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_linear_norm_ratio(device, out_dim, in_dim, gain):
    torch.manual_seed(0)
    layer = nn.Linear(in_dim, out_dim, bias=False).to(device)
    assert scaled_uniform_orthogonal_(layer.weight, gain=gain) is layer.weight
    x = torch.randn(10, in_dim, device=device)
    ratio = layer(x).norm(dim=1) / x.norm(dim=1)
    if out_dim >= in_dim:
        # Exact for every x: ||Wx||/||x|| = gain * sqrt(out/in).
        expected = torch.full_like(ratio, gain * math.sqrt(out_dim / in_dim))
        torch.testing.assert_close(ratio, expected, rtol=1e-5, atol=0)
    else:
        assert torch.all(ratio <= gain * (1 + 1e-5))
    _assert_scaled_orthonormal(layer.weight.detach(), gain * max(1.0, math.sqrt(out_dim / in_dim)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_ch,in_ch", [(32, 8), (8, 32)])
def test_conv2d_delta_structure_and_per_location_norms(device, out_ch, in_ch):
    torch.manual_seed(1)
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=(3, 5), padding=(1, 2), bias=False).to(device)
    scaled_uniform_orthogonal_(conv.weight)
    w = conv.weight.detach()
    centre = w[:, :, 1, 2]
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[:, :, 1, 2] = True
    assert torch.all(w[~mask] == 0)
    scale = max(1.0, math.sqrt(out_ch / in_ch))
    _assert_scaled_orthonormal(centre, scale)
    if out_ch >= in_ch:
        # The conv acts as the centre matrix at every location: exact per-location norm ratio.
        x = torch.randn(2, in_ch, 4, 6, device=device)
        ratio = conv(x).norm(dim=1) / x.norm(dim=1)
        torch.testing.assert_close(ratio, torch.full_like(ratio, scale), rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", [(12, 4, 5), (6, 3, 3, 3, 3)])
def test_conv1d_conv3d_delta(shape):
    w = scaled_uniform_orthogonal_(torch.empty(shape), gain=0.5)
    centre = tuple(k // 2 for k in shape[2:])
    nonzero = w.ne(0).nonzero()
    assert torch.all(nonzero[:, 2:] == torch.tensor(centre))
    _assert_scaled_orthonormal(w[(slice(None), slice(None)) + centre], 0.5 * math.sqrt(shape[0] / shape[1]))


def test_conv_without_delta_is_orthogonal_on_patches():
    torch.manual_seed(2)
    w = scaled_uniform_orthogonal_(torch.empty(64, 4, 3), delta=False)
    fan_in = 4 * 3
    _assert_scaled_orthonormal(w.reshape(64, fan_in), math.sqrt(64 / fan_in))
    # conv1d on a length-3 input sees exactly one patch: its norm is scaled by sqrt(out / (in * k)).
    x = torch.randn(5, 4, 3)
    ratio = F.conv1d(x, w).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(64 / fan_in)), rtol=1e-5, atol=0)
    # Even kernels are fine without delta.
    even = scaled_uniform_orthogonal_(torch.empty(4, 8, 2, 2), delta=False)
    _assert_scaled_orthonormal(even.reshape(4, 32), 1.0)


def test_sample_is_haar_not_raw_qr():
    # Raw Householder QR makes Q[0, 0] = -|g00|/||g0|| (always negative); the sign fix makes the first
    # column uniform on the sphere, so E[W00] = 0 and E[W00^2] = 1/n.
    gen = torch.Generator().manual_seed(3)
    n, draws = 4, 2000
    # Thousands of tiny QRs: multi-threaded LAPACK costs ~100x more per call on shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tall = torch.stack([scaled_uniform_orthogonal_(torch.empty(n, n), generator=gen)[0, 0] for _ in range(draws)])
        wide = torch.stack(
            [scaled_uniform_orthogonal_(torch.empty(n, 2 * n), generator=gen)[-1, -1] for _ in range(draws)]
        )
    finally:
        torch.set_num_threads(threads)
    for sample, var in ((tall, 1 / n), (wide, 1 / (2 * n))):
        assert abs(sample.mean().item()) < 5 * math.sqrt(var / draws)
        assert abs(sample.square().mean().item() - var) < 0.15 * var


def test_reproducible_under_manual_seed():
    torch.manual_seed(123)
    first = scaled_uniform_orthogonal_(torch.empty(16, 8, 3, 3))
    torch.manual_seed(123)
    second = scaled_uniform_orthogonal_(torch.empty(16, 8, 3, 3))
    torch.manual_seed(124)
    third = scaled_uniform_orthogonal_(torch.empty(16, 8, 3, 3))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)
    gen_a = scaled_uniform_orthogonal_(torch.empty(8, 8), generator=torch.Generator().manual_seed(7))
    gen_b = scaled_uniform_orthogonal_(torch.empty(8, 8), generator=torch.Generator().manual_seed(7))
    assert torch.equal(gen_a, gen_b)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_dtype_kept(dtype, atol):
    w = scaled_uniform_orthogonal_(torch.empty(24, 12, dtype=dtype))
    assert w.dtype == dtype
    _assert_scaled_orthonormal(w, math.sqrt(2), atol=atol)


def test_errors():
    with pytest.raises(ValueError, match="rank >= 2"):
        scaled_uniform_orthogonal_(torch.empty(5))
    with pytest.raises(TypeError, match="floating-point"):
        scaled_uniform_orthogonal_(torch.empty(4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="weight"):
        scaled_uniform_orthogonal_([[1.0, 0.0]])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gain"):
            scaled_uniform_orthogonal_(torch.empty(4, 4), gain=bad)
    with pytest.raises(TypeError, match="gain"):
        scaled_uniform_orthogonal_(torch.empty(4, 4), gain="1")
    with pytest.raises(ValueError, match="delta"):
        scaled_uniform_orthogonal_(torch.empty(4, 4, 3, 2))
    with pytest.raises(ValueError, match="empty"):
        scaled_uniform_orthogonal_(torch.empty(0, 4))


def test_tat_init_module():
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Conv2d(8, 16, 3, padding=1, groups=4),
        nn.ConvTranspose2d(16, 32, 3, padding=1),
        nn.Linear(6, 12),
        nn.ReLU(),
    )
    assert tat_init_(net) is net
    for layer in net[:4]:
        assert torch.all(layer.bias == 0)
    # Grouped conv: each group's [4 out, 2 in] centre block has orthonormal columns times sqrt(2).
    for block in net[1].weight.detach().chunk(4, dim=0):
        _assert_scaled_orthonormal(block[:, :, 1, 1], math.sqrt(2))
    x = torch.randn(2, 16, 5, 5)
    # Transposed conv, stored [in, out, k, k]: the map in -> out must still scale norms by sqrt(32/16).
    ratio = net[2](x).norm(dim=1) / x.norm(dim=1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(2)), rtol=1e-5, atol=0)
    x = torch.randn(3, 6)
    ratio = net[3](x).norm(dim=1) / x.norm(dim=1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(2)), rtol=1e-5, atol=0)


def test_tat_init_errors():
    with pytest.raises(ValueError, match="'1'.*delta"):
        tat_init_(nn.Sequential(nn.Linear(3, 3), nn.Conv2d(3, 3, 2)))
    tat_init_(nn.Sequential(nn.Conv2d(3, 3, 2)), delta=False)
    with pytest.raises(ValueError, match="lazy"):
        tat_init_(nn.LazyLinear(4))
    with pytest.raises(TypeError, match="module"):
        tat_init_(torch.empty(3, 3))


def test_numpy_scalars_and_argument_types():
    # Formerly gain=np.float32(1) was rejected (and delta was never checked: delta="no" is truthy).
    weights = [torch.empty(6, 4, 3, 3) for _ in range(2)]
    scaled_uniform_orthogonal_(weights[0], gain=1.5, delta=True, generator=torch.Generator().manual_seed(3))
    scaled_uniform_orthogonal_(weights[1], gain=np.float32(1.5), delta=np.bool_(True),
                               generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=0)
    net = tat_init_(nn.Sequential(nn.Linear(4, 4)), gain=np.float64(1.0), delta=np.bool_(False))
    _assert_scaled_orthonormal(net[0].weight.detach(), 1.0)
    for call, error, match in [
        (lambda: scaled_uniform_orthogonal_(torch.empty(4, 4), delta="no"), TypeError, "delta must be a bool"),
        (lambda: scaled_uniform_orthogonal_(torch.empty(4, 4), delta=1), TypeError, "delta must be a bool"),
        (lambda: scaled_uniform_orthogonal_(torch.empty(4, 4), gain=10**400), ValueError, "gain must be finite"),
        (lambda: scaled_uniform_orthogonal_(torch.empty(4, 4), generator=3), TypeError, "generator"),
        (lambda: tat_init_(nn.Linear(3, 3), gain="1"), TypeError, "gain"),
        (lambda: tat_init_(nn.Linear(3, 3), delta=None), TypeError, "delta"),
    ]:
        with pytest.raises(error, match=match):
            call()
