"""Per-location normalization against an explicit per-location loop."""
import math

import numpy as np
import pytest
import torch

from tat_ext.data import per_location_normalization

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
MODES = ["one", "avg_q", "off"]


def _loop_reference(x: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    """PLN of an NCHW tensor one location at a time, in float64 on the CPU."""
    x = x.double().cpu()
    batch, channels, height, width = x.shape
    extra = 0 if mode == "off" else 1
    out = torch.empty(batch, channels + extra, height, width, dtype=torch.float64)
    for n in range(batch):
        example_rms = math.sqrt(sum(v * v for v in x[n].flatten().tolist()) / x[n].numel())
        for i in range(height):
            for j in range(width):
                vec = x[n, :, i, j].tolist()
                if mode == "one":
                    vec.append(scale)
                elif mode == "avg_q":
                    vec.append(scale * example_rms)
                rms = math.sqrt(sum(v * v for v in vec) / len(vec))
                out[n, :, i, j] = torch.tensor([v / rms for v in vec], dtype=torch.float64)
    return out


def _q(y: torch.Tensor, channel_dim: int) -> torch.Tensor:
    return y.double().square().mean(dim=channel_dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_matches_loop_and_q_is_one(device, mode):
    torch.manual_seed(0)
    # Locations of very different scales, so the homogeneous coordinate matters.
    x = torch.randn(2, 3, 4, 5, device=device) * torch.logspace(-2, 2, 5, device=device)
    y = per_location_normalization(x, homog_mode=mode, homog_scale=2.5)
    assert y.device == x.device and y.dtype == x.dtype
    assert y.shape == (2, 3 + (mode != "off"), 4, 5)
    torch.testing.assert_close(_q(y, 1), torch.ones(2, 4, 5, dtype=torch.float64, device=device), rtol=0, atol=1e-6)
    torch.testing.assert_close(y.double().cpu(), _loop_reference(x, mode, 2.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_homogeneous_coordinate_values(device):
    x = torch.zeros(2, 3, 2, 2, device=device)
    x[0] = 2.0  # example RMS 2
    x[1, :, 0, 0] = 4.0  # example RMS 2 from a single location
    # "one" on a zero location: the vector is (0, 0, 0, s), so after PLN the coordinate is sqrt(4) = 2.
    y = per_location_normalization(x, "one", homog_scale=0.3)
    assert torch.allclose(y[1, 3, 1, 1], torch.tensor(2.0, device=device))
    # "one" on (2, 2, 2, s=2): all equal, so every entry is 1.
    y = per_location_normalization(x, "one", homog_scale=2.0)
    assert torch.allclose(y[0], torch.ones(4, 2, 2, device=device))
    # "avg_q": the coordinate is s * RMS(example) before PLN; (4, 4, 4, 0.5 * 2) at location (0, 0).
    y = per_location_normalization(x, "avg_q", homog_scale=0.5)
    rms = math.sqrt((3 * 16 + 1) / 4)
    assert torch.allclose(y[1, :, 0, 0], torch.tensor([4 / rms, 4 / rms, 4 / rms, 1 / rms], device=device))
    assert torch.allclose(y[1, :, 1, 1], torch.tensor([0.0, 0.0, 0.0, 2.0], device=device))
    # "off": a zero location stays zero (no NaN from 0/0).
    y = per_location_normalization(x, "off")
    assert torch.all(y[1, :, 1, 1] == 0) and not torch.isnan(y).any()


@pytest.mark.parametrize("mode", MODES)
def test_nchw_and_channels_last_agree(mode):
    torch.manual_seed(1)
    x = torch.randn(2, 6, 3, 4) * 5
    nchw = per_location_normalization(x, mode, 1.7, channel_dim=1)
    nhwc = per_location_normalization(x.permute(0, 2, 3, 1), mode, 1.7, channel_dim=-1)
    torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), nchw, rtol=1e-6, atol=1e-6)
    # A memory-format change only (same logical NCHW tensor) gives the same values too.
    torch.testing.assert_close(
        per_location_normalization(x.contiguous(memory_format=torch.channels_last), mode, 1.7), nchw
    )


@pytest.mark.parametrize("mode", MODES)
def test_unbatched_matches_batched(mode):
    torch.manual_seed(2)
    x = torch.randn(1, 5, 3, 3, 2)
    batched = per_location_normalization(x, mode, channel_dim=1)
    single = per_location_normalization(x[0], mode, has_batch_dim=False, channel_dim=0)
    torch.testing.assert_close(single, batched[0])


def test_vectors_and_sequences():
    x = torch.randn(4, 7) * 3
    y = per_location_normalization(x, "one")
    assert y.shape == (4, 8)
    torch.testing.assert_close(_q(y, 1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-6)
    seq = torch.randn(2, 9, 5)  # [batch, time, features]
    y = per_location_normalization(seq, "avg_q", channel_dim=-1)
    assert y.shape == (2, 9, 6)
    torch.testing.assert_close(_q(y, -1), torch.ones(2, 9, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2), (torch.float64, 1e-12)])
@pytest.mark.parametrize("mode", MODES)
def test_dtypes(device, dtype, atol, mode):
    torch.manual_seed(3)
    # 400² overflows float16 (max 65504): the reduction must not happen in the input dtype.
    x = (torch.randn(2, 3, 4, 4, device=device) * 400).to(dtype)
    y = per_location_normalization(x, mode, homog_scale=3.0)
    assert y.dtype == dtype and y.device == x.device
    assert torch.isfinite(y).all()
    torch.testing.assert_close(_q(y, 1), torch.ones(2, 4, 4, dtype=torch.float64, device=device), rtol=0, atol=8 * atol)
    torch.testing.assert_close(y.double().cpu(), _loop_reference(x, mode, 3.0), rtol=4 * atol, atol=4 * atol)


@pytest.mark.parametrize("mode", MODES)
def test_no_host_tensors_or_syncs_meta(mode):
    # The meta device has no data: any .item(), host tensor or cross-device cat would raise here.
    x = torch.empty(2, 3, 8, 8, device="meta")
    y = per_location_normalization(x, mode)
    assert y.device.type == "meta" and y.shape == (2, 3 + (mode != "off"), 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_no_sync_cuda(mode):
    x = torch.randn(4, 3, 16, 16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = per_location_normalization(x, mode, homog_scale=0.5, channel_dim=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert y.is_cuda


def test_errors():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="homog_mode"):
        per_location_normalization(x, homog_mode="ones")
    with pytest.raises(ValueError, match="homog_scale"):
        per_location_normalization(x, homog_scale=float("nan"))
    with pytest.raises(TypeError, match="homog_scale"):
        per_location_normalization(x, homog_scale=None)
    with pytest.raises(ValueError, match="batch axis"):
        per_location_normalization(x, channel_dim=0)
    with pytest.raises(ValueError, match="batch axis"):
        per_location_normalization(x, channel_dim=-3)
    with pytest.raises(ValueError, match="channel_dim"):
        per_location_normalization(x, channel_dim=3)
    with pytest.raises(TypeError, match="channel_dim"):
        per_location_normalization(x, channel_dim=1.0)
    with pytest.raises(TypeError, match="has_batch_dim"):
        per_location_normalization(x, has_batch_dim=1)
    with pytest.raises(TypeError, match="floating-point"):
        per_location_normalization(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must"):
        per_location_normalization([[1.0, 2.0]])
    with pytest.raises(ValueError, match="no channel axis"):
        per_location_normalization(torch.randn(5))
    with pytest.raises(ValueError, match="no channel axis"):
        per_location_normalization(torch.tensor(1.0), has_batch_dim=False)
    with pytest.raises(ValueError, match="avg_q"):
        per_location_normalization(torch.randn(4, 7), homog_mode="avg_q")
    with pytest.raises(ValueError, match="avg_q"):
        per_location_normalization(torch.randn(7), homog_mode="avg_q", has_batch_dim=False, channel_dim=0)


# --- Extreme scales, zero locations, 1 channel, numpy scalars (issue 8) --------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, scales", [
    (torch.float32, (1e30, 1e-30, 1e-41)),  # 1e-41: subnormal in float32
    (torch.float64, (1e250, 1e-250)),
    (torch.bfloat16, (1e35, 1e-35)),
    (torch.float16, (6e4, 1e-6)),  # 1e-6: subnormal in float16
])
@pytest.mark.parametrize("mode", ["avg_q", "off"])
def test_scale_invariant_modes_at_extreme_scales(device, dtype, scales, mode):
    # Formerly: all-1e20 float32 gave zeros (q overflowed) and all-1e-20 gave 0.0922 (q clamped).
    # "off" and "avg_q" are scale invariant, so the result must be that of the unscaled input.
    torch.manual_seed(4)
    base = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device).abs() + 0.5
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    for scale in scales:
        x = (base * scale).to(dtype)
        # Compare with the normalization of the *rounded* input (its entries are what PLN sees).
        expected = per_location_normalization(x.double() / scale, mode)
        y = per_location_normalization(x, mode)
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol, msg=f"scale {scale}")


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e20), (torch.float32, 1e-20), (torch.bfloat16, 1e30)])
def test_homogeneous_one_at_extreme_scales(dtype, scale):
    torch.manual_seed(5)
    x = (torch.randn(2, 3, 4, 4, dtype=torch.float64) * scale).to(dtype)
    y = per_location_normalization(x, "one")
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    # Python floats hold 1e40 and 1e-40: the loop reference squares them without trouble.
    torch.testing.assert_close(y.double(), _loop_reference(x, "one", 1.0), rtol=tol, atol=tol)
    torch.testing.assert_close(_q(y, 1), torch.ones(2, 4, 4, dtype=torch.float64), rtol=0, atol=4 * tol)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_matches_float64_formula_and_zero_locations_get_zero(mode):
    # Formerly a zero location under "off" got a gradient of ~9e18 (q clamped to the tiny number).
    torch.manual_seed(6)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    x[0, :, 1, 2] = 0.0
    if mode == "avg_q":
        x[1] = 0.0  # an all-zero example: its homogeneous coordinate is 0 too
    x.requires_grad_(True)
    weights = torch.randn(2, 3 + (mode != "off"), 4, 5, dtype=torch.float64)
    (per_location_normalization(x, mode, homog_scale=1.7) * weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    # Zero vectors after the homogeneous coordinate is appended: (0, 0, 0, s) is a regular point.
    zero_locations = torch.zeros(2, 4, 5, dtype=torch.bool)
    if mode == "off":
        zero_locations[0, 1, 2] = True
    elif mode == "avg_q":
        zero_locations[1] = True
    assert torch.all(x.grad.permute(0, 2, 3, 1)[zero_locations] == 0)

    # Elsewhere: autograd of the textbook formula in float64 (no scaling tricks).
    ref_x = x.detach().clone().requires_grad_(True)
    v = ref_x
    if mode == "one":
        v = torch.cat([v, torch.full((2, 1, 4, 5), 1.7, dtype=torch.float64)], dim=1)
    elif mode == "avg_q":
        rms = v.square().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-300).sqrt()
        v = torch.cat([v, (1.7 * rms).expand(2, 1, 4, 5)], dim=1)
    ref = v / v.square().mean(dim=1, keepdim=True).clamp_min(1e-300).sqrt()
    (ref * weights).sum().backward()
    keep = ~zero_locations.unsqueeze(1).expand_as(x)
    if mode == "avg_q":
        keep[1] = False  # the textbook formula's sqrt has no gradient at an all-zero example
    torch.testing.assert_close(x.grad[keep], ref_x.grad[keep], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: per_location_normalization(t, mode, 0.8), (x,))


def test_one_channel_cannot_be_normalized_without_a_homogeneous_coordinate():
    x = torch.tensor([0.5, -2.0, 0.0, 7.0]).reshape(4, 1)  # formerly → [1, -1, 0, 1]
    with pytest.raises(ValueError, match="single value.*only its sign"):
        per_location_normalization(x, homog_mode="off")
    with pytest.raises(ValueError, match="homog_scale=0"):
        per_location_normalization(x, homog_mode="one", homog_scale=0.0)
    y = per_location_normalization(x)  # the default appends a coordinate: 1 channel → 2
    assert y.shape == (4, 2)
    torch.testing.assert_close(y[:, 0] / y[:, 1], x[:, 0])
    with pytest.raises(ValueError, match="no channels"):
        per_location_normalization(torch.randn(2, 0, 3))


def test_numpy_scalars_are_accepted():
    x = torch.randn(2, 3, 4, 4)
    expected = per_location_normalization(x, "avg_q", homog_scale=2.0, has_batch_dim=True, channel_dim=1)
    got = per_location_normalization(x, "avg_q", homog_scale=np.float32(2.0), has_batch_dim=np.bool_(True),
                                     channel_dim=np.int64(1))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
