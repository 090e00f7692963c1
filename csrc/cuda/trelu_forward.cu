// Forward of the fused transformed Leaky ReLU: y = trelu(x + b_eff[c]) and, for save="mask",
// the packed signs of the pre-activation. Purely memory-bound: each element is read once and
// written once, 16 bytes per access, kUnroll independent loads in flight per thread.
//
// The work is cut into "slots" of VEC consecutive elements at multiples of VEC (one 16-byte pack,
// or one element on the misaligned fallback). Two grids share the per-slot code:
//  - planes (NCHW-like, inner >= kPlaneMinSlots slots, or no channels): a segment is kThreads
//    slots of one (outer, channel) plane, so its bias is one value; a block takes kUnroll
//    consecutive segments (several short planes, or a run of chunks of a long one). A slot that
//    straddles two planes is done half by each segment, element by element.
//  - flat (channels_last, small inner, or a mask whose words would straddle planes): a block
//    takes kUnroll * kThreads consecutive slots and finds each slot's channels by division
//    (channel = i % C along the fastest dimension for channels_last).
// Mask words are built per warp from 32 * VEC consecutive elements, and every block's range
// starts and ends on a word boundary, so each word has exactly one writer and no atomics.
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <climits>

#include "cuda_utils.cuh"
#include "launch.cuh"
#include "trelu_cuda.h"
#include "trelu_grid.h"

namespace tat_ext::cuda {
namespace {

template <typename scalar_t, int VEC>
struct ForwardSlots {
  using acc_t = acc_type_of<scalar_t>;
  using Params = ForwardParams<scalar_t, acc_t>;

  scalar_t v[kUnroll][VEC];

  __device__ __forceinline__ void load(const Params& p, int u, const Segment& s) {
    if (s.active) load_slot<VEC>(p.x, s.slot * VEC, s.lo, s.hi, v[u]);
  }

  // b[e]: the bias of element slot * VEC + e. Every lane of the warp must call this (the mask
  // words are assembled with warp shuffles).
  __device__ __forceinline__ void compute_store(const Params& p, int u, const Segment& s,
                                                const acc_t (&b)[VEC]) {
    const int64_t i = s.slot * VEC;
    uint32_t bits = 0;
    if (s.active) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        bool positive;
        const acc_t y = forward_value(static_cast<acc_t>(v[u][e]), b[e], p.k, positive);
        v[u][e] = static_cast<scalar_t>(y);
        const bool inside = i + e >= s.lo && i + e < s.hi;
        bits |= static_cast<uint32_t>(positive && inside) << e;
      }
      store_slot<VEC>(p.y, i, s.lo, s.hi, v[u]);
    }
    if (p.mask != nullptr) {  // uniform over the grid
      const int lane = threadIdx.x % kWarpSize;
      const uint32_t word = warp_pack_bits<VEC>(bits, lane);
      // A word's first slot is active whenever any of its slots is (ranges are prefixes).
      if (s.active && lane % (kWarpSize / VEC) == 0) {
        store_global(p.mask + i / kMaskWordBits, word);
      }
    }
  }
};

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    trelu_forward_planes(ForwardParams<scalar_t, acc_type_of<scalar_t>> p, PlaneGrid g) {
  using acc_t = acc_type_of<scalar_t>;
  ForwardSlots<scalar_t, VEC> slots;
  Segment seg[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    seg[u] = g.segment<VEC>(int64_t{blockIdx.x} * kUnroll + u, threadIdx.x);
    slots.load(p, u, seg[u]);
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    acc_t b[VEC];
    const acc_t bias = p.b_eff[g.channel(seg[u])];
#pragma unroll
    for (int e = 0; e < VEC; ++e) b[e] = bias;
    slots.compute_store(p, u, seg[u], b);
  }
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    trelu_forward_flat(ForwardParams<scalar_t, acc_type_of<scalar_t>> p, DivMod64 by_inner,
                       DivMod64 by_channels) {
  using acc_t = acc_type_of<scalar_t>;
  const int64_t slots_total = (p.numel + VEC - 1) / VEC;
  ForwardSlots<scalar_t, VEC> slots;
  Segment seg[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t slot = (int64_t{blockIdx.x} * kUnroll + u) * kThreads + threadIdx.x;
    seg[u] = Segment{slot, 0, p.numel, 0, slot < slots_total};
    slots.load(p, u, seg[u]);
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    acc_t b[VEC];
    if (seg[u].active) {
      // Channel of the slot's first element, then stepped element by element (a slot can
      // cross channels when inner < VEC, and wrap around C).
      const int64_t i = seg[u].slot * VEC;
      const int64_t q = by_inner.div(i);
      int64_t rem = i - q * p.inner;
      int64_t c = by_channels.mod(q);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        b[e] = p.b_eff[c];
        if (++rem == p.inner) {
          rem = 0;
          if (++c == p.channels) c = 0;
        }
      }
    }
    slots.compute_store(p, u, seg[u], b);
  }
}

template <typename scalar_t, int VEC>
void launch(const ForwardParams<scalar_t, acc_type_of<scalar_t>>& p, cudaStream_t stream) {
  // A mask word must not straddle two planes, or two blocks would write it.
  const bool mask_fits_planes =
      p.mask == nullptr || p.channels == 1 || p.inner % kMaskWordBits == 0;
  if (use_planes(p.channels, p.inner, VEC) && mask_fits_planes) {
    const PlaneGrid g = make_plane_grid(p.numel, p.channels, p.inner, VEC);
    launch_kernel(trelu_forward_planes<scalar_t, VEC>, g.blocks(), kThreads, stream, p, g);
  } else {
    const int64_t blocks = ceil_div(ceil_div(p.numel, VEC), kUnroll * kThreads);
    TORCH_CHECK(blocks <= INT_MAX, "trelu_forward (CUDA): tensor too large for one launch");
    launch_kernel(trelu_forward_flat<scalar_t, VEC>, static_cast<unsigned>(blocks), kThreads,
                  stream, p, DivMod64(p.inner), DivMod64(p.channels));
  }
}

}  // namespace

template <typename scalar_t>
void launch_trelu_forward(const ForwardParams<scalar_t, acc_type_of<scalar_t>>& p,
                          cudaStream_t stream) {
  if (p.numel == 0) return;
  constexpr int V = kVec16<scalar_t>;
  if (is_pack_aligned(p.x, V) && is_pack_aligned(p.y, V)) {
    launch<scalar_t, V>(p, stream);
  } else {  // e.g. x is a view at an odd storage offset
    launch<scalar_t, 1>(p, stream);
  }
}

template void launch_trelu_forward<float>(const ForwardParams<float, float>&, cudaStream_t);
template void launch_trelu_forward<double>(const ForwardParams<double, double>&, cudaStream_t);
template void launch_trelu_forward<c10::Half>(const ForwardParams<c10::Half, float>&,
                                              cudaStream_t);
template void launch_trelu_forward<c10::BFloat16>(const ForwardParams<c10::BFloat16, float>&,
                                                  cudaStream_t);

}  // namespace tat_ext::cuda
