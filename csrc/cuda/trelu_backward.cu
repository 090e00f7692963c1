// Backward of the fused transformed Leaky ReLU: grad_x = dL/dz from grad_y and the saved tensor
// (x, y or the packed mask), and grad_bias[c] = sum of dL/dz over channel c, in ONE pass over
// grad_y. No float atomics: each block writes its partial sums (acc_t) to its own workspace
// slots, and a second stage (reduce_channel_partials, a level or two of small launches) adds
// them per channel in a fixed order, so grad_bias is bitwise reproducible run to run.
//  - plane grid (NCHW-like, see trelu_forward.cu): a segment lies in one plane, so it has ONE
//    partial sum; workspace [outer, C, chunks].
//  - column grid (channels_last and other short planes): the tensor is [rows, P = C * inner];
//    a thread owns VEC adjacent columns (vectorized along C for channels_last), walks down a
//    block's rows summing per column, and the block folds its threadIdx.y partials; workspace
//    [row blocks, C, inner].
//
// Accuracy of grad_bias: each dL/dz term reaches grad_bias through a fixed tree of acc_t
// additions, so |error| <= D * u * sum |dz| (u = 2^-24 for fp32; to first order), where D bounds
// the additions on any term's path:
//  - plane grid: a thread's VEC terms, 5 warp levels, 4 warps: D1 <= VEC + 8;
//  - column grid: a thread's walk down W rows is blocked (kUnroll * kIterationsPerFold = 16 rows
//    in registers, kFoldsPerTier = 32 such blocks in one shared slot, the rest in another), then
//    <= 8 tree levels over threadIdx.y: D1 <= 16 + 32 + W / 512 + 2 + 8;
//  - each second-stage level: kReduceTermsPerThread = 16 terms per thread in order, then <= 8
//    tree levels: <= 24 per level, ceil(log(partials per channel) / log(128)) levels or fewer.
// E.g. 715M fp32 elements per channel, channels_last with C = 64 (W ~ 21800, 2 levels):
// D <= 104 + 48 = 152, where a serial sum down the channel would allow 7e8 (and drift ~1e-4).
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <climits>

#include "cuda_utils.cuh"
#include "launch.cuh"
#include "trelu_cuda.h"
#include "trelu_grid.h"

namespace tat_ext::cuda {
namespace {

constexpr int kColThreads = 256;         // threads per block of the column grid
// Column blocks per SM at least: caps the column kernel at 128 registers per thread (the
// 16-bit dtypes with save="input" would take ~150 and halve the occupancy).
constexpr int kColMinBlocksPerSm = 2;
constexpr int64_t kColTargetBlocks = 2048;  // enough blocks for every SM of an H100/H200
// Rows per column block at least: bounds the workspace at 1/kMinRows of grad_y's elements.
constexpr int64_t kMinRows = 32;
// A column thread adds its running sums into its shared-memory slot every kIterationsPerFold
// iterations of kUnroll rows, and that slot into a second one every kFoldsPerTier times.
constexpr int kIterationsPerFold = 4;
constexpr int kFoldsPerTier = 32;
constexpr int kReduceThreads = 256;
constexpr int64_t kReduceTermsPerThread = 16;  // per level of the second stage

// Loads and computes the slots of one thread (kUnroll of them); see ForwardSlots.
template <typename scalar_t, int VEC, SaveKind kKind>
struct BackwardSlots {
  using acc_t = acc_type_of<scalar_t>;
  using Params = BackwardParams<scalar_t, acc_t>;

  scalar_t g[kUnroll][VEC];
  scalar_t s[kUnroll][VEC];  // saved x or y
  uint32_t bits[kUnroll];    // saved signs

  __device__ __forceinline__ void load(const Params& p, int u, const Segment& seg) {
    if (!seg.active) return;
    const int64_t i = seg.slot * VEC;
    load_slot<VEC>(p.grad_y, i, seg.lo, seg.hi, g[u]);
    if constexpr (kKind == SaveKind::Mask) {
      bits[u] = load_mask_bits<VEC>(p.mask, i);
    } else {
      load_slot<VEC>(p.saved, i, seg.lo, seg.hi, s[u]);
    }
  }

  // Stores grad_x of the slot and adds each element's dL/dz into sums[e]. b[e]: bias of element
  // e (SaveKind::Input only).
  __device__ __forceinline__ void compute_store(const Params& p, int u, const Segment& seg,
                                                const acc_t (&b)[VEC], acc_t (&sums)[VEC]) {
    if (!seg.active) return;
    const int64_t i = seg.slot * VEC;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      bool positive;
      if constexpr (kKind == SaveKind::Input) {
        positive = tat_ext::tat_positive(static_cast<acc_t>(s[u][e]) + b[e]);
      } else if constexpr (kKind == SaveKind::Output) {
        positive = tat_ext::tat_positive(static_cast<acc_t>(s[u][e]));
      } else {
        positive = (bits[u] >> e) & 1u;
      }
      const acc_t dz = grad_value(static_cast<acc_t>(g[u][e]), positive, p.k);
      g[u][e] = static_cast<scalar_t>(dz);
      if (i + e >= seg.lo && i + e < seg.hi) sums[e] += dz;
    }
    store_slot<VEC>(p.grad_x, i, seg.lo, seg.hi, g[u]);
  }
};

template <typename scalar_t, int VEC, SaveKind kKind>
__global__ void __launch_bounds__(kThreads)
    trelu_backward_planes(BackwardParams<scalar_t, acc_type_of<scalar_t>> p, PlaneGrid grid,
                          acc_type_of<scalar_t>* __restrict__ partial) {
  using acc_t = acc_type_of<scalar_t>;
  BackwardSlots<scalar_t, VEC, kKind> slots;
  Segment seg[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    seg[u] = grid.segment<VEC>(int64_t{blockIdx.x} * kUnroll + u, threadIdx.x);
    slots.load(p, u, seg[u]);
  }
  acc_t seg_sum[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    acc_t b[VEC];
    if constexpr (kKind == SaveKind::Input) {
      const acc_t bias = p.b_eff[grid.channel(seg[u])];
#pragma unroll
      for (int e = 0; e < VEC; ++e) b[e] = bias;
    }
    acc_t sums[VEC] = {};
    slots.compute_store(p, u, seg[u], b, sums);
    seg_sum[u] = 0;
#pragma unroll
    for (int e = 0; e < VEC; ++e) seg_sum[u] += sums[e];
  }
  if (!p.bias_grad) return;  // uniform over the grid
  // One partial per segment: warp sums, then the warps' sums in warp order.
  __shared__ acc_t warp_sums[kUnroll][kThreads / kWarpSize];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const acc_t w = warp_sum(seg_sum[u]);
    if (lane == 0) warp_sums[u][warp] = w;
  }
  __syncthreads();
  if (threadIdx.x < kUnroll) {
    const int64_t s = int64_t{blockIdx.x} * kUnroll + threadIdx.x;
    if (s < grid.segments) {
      acc_t total = 0;
#pragma unroll
      for (int w = 0; w < kThreads / kWarpSize; ++w) total += warp_sums[threadIdx.x][w];
      store_global(partial + s, total);
    }
  }
}

struct ColumnGrid {
  int64_t period;          // P = channels * inner: elements per row
  int64_t rows;            // numel / P
  int64_t cols;            // slots per row: P / VEC
  int64_t rows_per_block;  // rows of one blockIdx.y
  dim3 block, grid;
};

ColumnGrid make_column_grid(int64_t numel, int64_t channels, int64_t inner, int vec) {
  ColumnGrid g;
  g.period = channels * inner;
  g.rows = numel / g.period;
  g.cols = g.period / vec;
  // Short rows (channels_last with few channels): a block spans several rows at once.
  const int64_t tx = std::min<int64_t>(g.cols, kColThreads);
  const int64_t ty = kColThreads / tx;
  const int64_t col_blocks = ceil_div(g.cols, tx);
  TORCH_CHECK(col_blocks <= INT_MAX, "trelu_backward (CUDA): rows of ", g.period,
              " elements are too long for one launch");
  const int64_t max_row_blocks =
      std::min<int64_t>(65535, ceil_div(g.rows, std::max<int64_t>(kMinRows, ty * kUnroll)));
  const int64_t want = std::clamp<int64_t>(ceil_div(kColTargetBlocks, col_blocks), 1,
                                           std::max<int64_t>(max_row_blocks, 1));
  g.rows_per_block = ceil_div(g.rows, want);
  const int64_t row_blocks = ceil_div(g.rows, g.rows_per_block);
  g.block = dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty));
  g.grid = dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks));
  return g;
}

template <typename scalar_t, int VEC, SaveKind kKind>
__global__ void __launch_bounds__(kColThreads, kColMinBlocksPerSm)
    trelu_backward_columns(BackwardParams<scalar_t, acc_type_of<scalar_t>> p, ColumnGrid grid,
                           acc_type_of<scalar_t>* __restrict__ partial) {
  using acc_t = acc_type_of<scalar_t>;
  const int64_t col = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const bool col_ok = col < grid.cols;
  acc_t b[VEC];
  if constexpr (kKind == SaveKind::Input) {
    // The thread's columns keep their channels down the rows: look the biases up once.
    int64_t c = col_ok ? col * VEC / p.inner : 0;
    int64_t rem = col_ok ? col * VEC - c * p.inner : 0;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      b[e] = p.b_eff[c];
      if (++rem == p.inner && c + 1 < p.channels) rem = 0, ++c;
    }
  }
  const int64_t r_begin = int64_t{blockIdx.y} * grid.rows_per_block;
  const int64_t r_end =
      r_begin + grid.rows_per_block < grid.rows ? r_begin + grid.rows_per_block : grid.rows;
  // Blocked sums down the columns (the bound at the top of the file): in registers, then in
  // this thread's slots of tier1 and tier2 (shared memory: registers set the occupancy).
  __shared__ acc_t tier1[kColThreads * VEC], tier2[kColThreads * VEC];
  acc_t* const t1 = tier1 + (threadIdx.y * blockDim.x + threadIdx.x) * VEC;
  acc_t* const t2 = tier2 + (threadIdx.y * blockDim.x + threadIdx.x) * VEC;
  acc_t sums[VEC] = {};
#pragma unroll
  for (int e = 0; e < VEC; ++e) t1[e] = t2[e] = 0;
  unsigned iterations = 0;
  for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kUnroll * blockDim.y) {
    BackwardSlots<scalar_t, VEC, kKind> slots;
    Segment seg[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t row = r + int64_t{u} * blockDim.y;
      seg[u] = Segment{row * grid.cols + col, 0, p.numel, 0, col_ok && row < r_end};
      slots.load(p, u, seg[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) slots.compute_store(p, u, seg[u], b, sums);
    if (++iterations % kIterationsPerFold == 0) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) t1[e] += sums[e], sums[e] = 0;
      if (iterations % (kIterationsPerFold * kFoldsPerTier) == 0) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) t2[e] += t1[e], t1[e] = 0;
      }
    }
  }
  if (!p.bias_grad) return;  // uniform over the grid
#pragma unroll
  for (int e = 0; e < VEC; ++e) sums[e] = t2[e] + (t1[e] + sums[e]);
  sum_over_y(tier1, sums);  // tier1 is free again: the block's tree sum uses it
  if (threadIdx.y == 0 && col_ok) {
    acc_t* out = partial + int64_t{blockIdx.y} * grid.period + col * VEC;
#pragma unroll
    for (int e = 0; e < VEC; ++e) store_global(out + e, sums[e]);
  }
}

// The second stage: out[s, c] = sum of in[(a * channels + c) * inner + b] over the s-th run of
// `span` terms of the (a, b) sequence, a-major. blockDim = (channels per block, threads per
// channel), grid = (channel blocks, runs): a thread adds every blockDim.y-th term of its run in
// order, then the block folds them in a fixed tree. Repeated on [runs, C, 1] until one run is
// left (ReduceLevel), so every SM helps and the result is the same bits every time.
template <typename acc_t>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_channel_partials(const acc_t* __restrict__ in, int64_t channels, int64_t inner,
                            int64_t count, int64_t span, DivMod64 by_inner,
                            acc_t* __restrict__ out) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t begin = int64_t{blockIdx.y} * span;
  const int64_t end = begin + span < count ? begin + span : count;
  acc_t sum[1] = {0};
  if (c < channels) {
    for (int64_t t = begin + threadIdx.y; t < end; t += blockDim.y) {
      const int64_t a = by_inner.div(t);
      sum[0] += in[(a * channels + c) * inner + (t - a * inner)];
    }
  }
  __shared__ acc_t red[kReduceThreads];
  sum_over_y(red, sum);
  if (threadIdx.y == 0 && c < channels) {
    store_global(out + int64_t{blockIdx.y} * channels + c, sum[0]);
  }
}

// One launch of reduce_channel_partials: sums `count` terms per channel into `runs` values.
struct ReduceLevel {
  int64_t inner, count, span, runs;
  dim3 block, grid;
};

// Calls f(level) for each level that takes the [outer, channels, inner] partials down to one
// value per channel; the last level has runs == 1.
template <typename F>
void for_each_reduce_level(int64_t outer, int64_t channels, int64_t inner, F&& f) {
  const int64_t lanes = std::min<int64_t>(channels, 32);
  const int64_t per_channel = kReduceThreads / lanes;
  const int64_t span = per_channel * kReduceTermsPerThread;
  const int64_t channel_blocks = ceil_div(channels, lanes);
  TORCH_CHECK(channel_blocks <= INT_MAX, "trelu_backward (CUDA): too many channels");
  int64_t count = outer * inner;
  while (true) {
    const int64_t runs = ceil_div(count, span);
    TORCH_CHECK(runs <= 65535, "trelu_backward (CUDA): too many partial sums");
    f(ReduceLevel{inner, count, span, runs,
                  dim3(static_cast<unsigned>(lanes), static_cast<unsigned>(per_channel)),
                  dim3(static_cast<unsigned>(channel_blocks), static_cast<unsigned>(runs))});
    if (runs == 1) return;
    count = runs;
    inner = 1;
  }
}

template <typename scalar_t, int VEC, SaveKind kKind>
void launch_main(const BackwardParams<scalar_t, acc_type_of<scalar_t>>& p,
                 const BackwardLaunch& plan, acc_type_of<scalar_t>* partial,
                 cudaStream_t stream) {
  if (plan.columns) {
    const ColumnGrid g = make_column_grid(p.numel, p.channels, p.inner, VEC);
    launch_kernel(trelu_backward_columns<scalar_t, VEC, kKind>, g.grid, g.block, stream, p, g,
                  partial);
  } else {
    const PlaneGrid g = make_plane_grid(p.numel, p.channels, p.inner, VEC);
    launch_kernel(trelu_backward_planes<scalar_t, VEC, kKind>, g.blocks(), kThreads, stream, p,
                  g, partial);
  }
}

template <typename scalar_t, int VEC>
void launch_kind(const BackwardParams<scalar_t, acc_type_of<scalar_t>>& p,
                 const BackwardLaunch& plan, acc_type_of<scalar_t>* partial,
                 cudaStream_t stream) {
  switch (p.kind) {
    case SaveKind::Input:
      launch_main<scalar_t, VEC, SaveKind::Input>(p, plan, partial, stream);
      break;
    case SaveKind::Output:
      launch_main<scalar_t, VEC, SaveKind::Output>(p, plan, partial, stream);
      break;
    default:
      launch_main<scalar_t, VEC, SaveKind::Mask>(p, plan, partial, stream);
  }
}

}  // namespace

template <typename scalar_t>
BackwardLaunch plan_trelu_backward(const BackwardParams<scalar_t, acc_type_of<scalar_t>>& p) {
  constexpr int V = kVec16<scalar_t>;
  const bool aligned = is_pack_aligned(p.grad_y, V) && is_pack_aligned(p.grad_x, V) &&
                       (p.kind == SaveKind::Mask || is_pack_aligned(p.saved, V));
  BackwardLaunch plan{};
  if (p.numel == 0) return plan;
  plan.columns = !use_planes(p.channels, p.inner, aligned ? V : 1);
  // Column slots must not cross rows.
  plan.vectorized = aligned && (!plan.columns || p.channels * p.inner % V == 0);
  const int vec = plan.vectorized ? V : 1;
  if (plan.columns) {
    const ColumnGrid g = make_column_grid(p.numel, p.channels, p.inner, vec);
    plan.reduce_outer = g.grid.y;
    plan.reduce_inner = p.inner;
  } else {
    plan.reduce_outer = p.numel / (p.channels * p.inner);
    plan.reduce_inner = make_plane_grid(p.numel, p.channels, p.inner, vec).chunks;
  }
  if (p.bias_grad) {
    plan.workspace = plan.reduce_outer * p.channels * plan.reduce_inner;
    for_each_reduce_level(plan.reduce_outer, p.channels, plan.reduce_inner,
                          [&](const ReduceLevel& l) {
                            if (l.runs > 1) plan.workspace += l.runs * p.channels;
                          });
  }
  return plan;
}

template <typename scalar_t>
void launch_trelu_backward(const BackwardParams<scalar_t, acc_type_of<scalar_t>>& p,
                           const BackwardLaunch& plan, acc_type_of<scalar_t>* workspace,
                           acc_type_of<scalar_t>* grad_bias, cudaStream_t stream) {
  using acc_t = acc_type_of<scalar_t>;
  if (p.numel == 0) {
    if (p.bias_grad) {
      C10_CUDA_CHECK(cudaMemsetAsync(grad_bias, 0, p.channels * sizeof(acc_t), stream));
    }
    return;
  }
  if (plan.vectorized) {
    launch_kind<scalar_t, kVec16<scalar_t>>(p, plan, workspace, stream);
  } else {  // misaligned views, or column rows that are not whole packs
    launch_kind<scalar_t, 1>(p, plan, workspace, stream);
  }
  if (!p.bias_grad) return;
  // Each level reads the previous one's sums and writes its own after them in the workspace.
  const acc_t* in = workspace;
  acc_t* next = workspace + plan.reduce_outer * p.channels * plan.reduce_inner;
  for_each_reduce_level(plan.reduce_outer, p.channels, plan.reduce_inner,
                        [&](const ReduceLevel& l) {
                          acc_t* out = l.runs == 1 ? grad_bias : next;
                          launch_kernel(reduce_channel_partials<acc_t>, l.grid, l.block, stream,
                                        in, p.channels, l.inner, l.count, l.span,
                                        DivMod64(l.inner), out);
                          in = out;
                          next = out + l.runs * p.channels;
                        });
}

#define TAT_INSTANTIATE_BACKWARD(scalar_t)                                          \
  template BackwardLaunch plan_trelu_backward<scalar_t>(                            \
      const BackwardParams<scalar_t, acc_type_of<scalar_t>>&);                      \
  template void launch_trelu_backward<scalar_t>(                                    \
      const BackwardParams<scalar_t, acc_type_of<scalar_t>>&, const BackwardLaunch&, \
      acc_type_of<scalar_t>*, acc_type_of<scalar_t>*, cudaStream_t);
TAT_INSTANTIATE_BACKWARD(float)
TAT_INSTANTIATE_BACKWARD(double)
TAT_INSTANTIATE_BACKWARD(c10::Half)
TAT_INSTANTIATE_BACKWARD(c10::BFloat16)
#undef TAT_INSTANTIATE_BACKWARD

}  // namespace tat_ext::cuda
