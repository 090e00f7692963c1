// The plane grid shared by the forward and backward kernels (trelu_forward.cu has the picture):
// segments of kThreads slots, each inside one (outer, channel) plane, kUnroll per block.
#pragma once

#include <c10/util/Exception.h>

#include <climits>
#include <cstdint>

#include "cuda_utils.cuh"

namespace tat_ext::cuda {

constexpr int kThreads = 128;  // threads per block of the plane and flat grids
constexpr int kUnroll = 4;     // slots per thread: independent 16-byte loads in flight
// Planes of at least this many slots use the plane grid: a segment then keeps >= 3/4 of its
// threads busy. Shorter planes go to the flat (forward) or column (backward) grid.
constexpr int64_t kPlaneMinSlots = 96;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool use_planes(int64_t channels, int64_t inner, int vec) {
  return channels == 1 || inner >= kPlaneMinSlots * vec;
}

// One thread's slot of a segment.
struct Segment {
  int64_t slot;    // first element is slot * VEC
  int64_t lo, hi;  // elements the segment owns: its plane (or the whole tensor)
  int64_t plane;   // plane index (outer * channels + channel); plane grid only
  bool active;     // the slot holds at least one element of [lo, hi)
};

struct PlaneGrid {
  int64_t inner;     // plane length in elements
  int64_t chunks;    // segments per plane
  int64_t segments;  // planes * chunks, numbered plane-major
  DivMod64 by_chunks;
  DivMod64 by_channels;

  unsigned blocks() const { return static_cast<unsigned>(ceil_div(segments, kUnroll)); }

  template <int VEC>
  __device__ __forceinline__ Segment segment(int64_t seg, int tid) const {
    const int64_t plane = by_chunks.div(seg);
    const int64_t chunk = seg - plane * chunks;
    const int64_t lo = plane * inner, hi = lo + inner;
    // Slots are aligned to the buffer, not to the plane: the first and last slot of a plane
    // can be shared with its neighbours (handled element-wise by load_slot/store_slot).
    const int64_t slot = lo / VEC + chunk * kThreads + tid;
    return Segment{slot, lo, hi, plane, seg < segments && slot < (hi + VEC - 1) / VEC};
  }
  // Channel of a segment's plane (always a valid index, also for an inactive segment).
  __device__ __forceinline__ int64_t channel(const Segment& s) const {
    return by_channels.mod(s.plane);
  }
};

inline PlaneGrid make_plane_grid(int64_t numel, int64_t channels, int64_t inner, int vec) {
  // A plane covers ceil(inner / vec) slots, one more when it starts inside a slot.
  const int64_t slots = ceil_div(inner, vec) + (inner % vec != 0 ? 1 : 0);
  const int64_t chunks = ceil_div(slots, kThreads);
  const int64_t segments = numel / inner * chunks;
  TORCH_CHECK(ceil_div(segments, kUnroll) <= INT_MAX, "trelu (CUDA): tensor of ", numel,
              " elements is too large for one launch");
  return PlaneGrid{inner, chunks, segments, DivMod64(chunks), DivMod64(channels)};
}

// Sums v over threadIdx.y for each (threadIdx.x, w) in a fixed tree order; the result is left in
// v on the threads with threadIdx.y == 0. red: blockDim.x * blockDim.y * W shared values. Every
// thread of the block must call it.
template <int W, typename acc_t>
__device__ __forceinline__ void sum_over_y(acc_t* red, acc_t (&v)[W]) {
  const int x = threadIdx.x, y = threadIdx.y, nx = blockDim.x, ny = blockDim.y;
#pragma unroll
  for (int w = 0; w < W; ++w) red[(y * nx + x) * W + w] = v[w];
  int step = 1;
  while (step < ny) step *= 2;
  for (step /= 2; step > 0; step /= 2) {
    __syncthreads();
    if (y < step && y + step < ny) {
#pragma unroll
      for (int w = 0; w < W; ++w) red[(y * nx + x) * W + w] += red[((y + step) * nx + x) * W + w];
    }
  }
  __syncthreads();
  if (y == 0) {
#pragma unroll
    for (int w = 0; w < W; ++w) v[w] = red[x * W + w];
  }
}

}  // namespace tat_ext::cuda
