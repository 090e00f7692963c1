// Splitting a flat range of a dense tensor into runs whose bias pattern is SIMD-friendly, and the
// fixed tiling the backward uses for its deterministic per-channel reduction.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../trelu_plan.h"

// Per instruction set (see TAT_ISA_BEGIN in trelu_math.h): included by the kernels of cpu/isa/.
namespace tat_ext::cpu::CPU_CAPABILITY {

// How the channel changes along memory.
enum class RunShape {
  Constant,  // long stretches of one channel (NCHW-like, or no bias): broadcast the bias
  Periodic,  // short rows (channels_last with few channels): bias read from a repeated table
  Sweep,     // channel is the fastest dimension and rows are long (Linear, wide channels_last)
};

constexpr int64_t kTableRun = 1024;      // longest run served from the periodic table
constexpr int64_t kPeriodicMax = 4096;   // longest period (channels * inner) given a table
constexpr int64_t kConstantMin = 16;     // inner >= this: constant runs are long enough for SIMD
constexpr int64_t kTileElems = 16384;    // target work per backward tile
constexpr int64_t kInnerChunk = 32768;   // a channel's stretch is split into chunks of this size
constexpr int64_t kChannelBlock = 4096;  // target elements of one row handled by a tile

template <typename acc_t>
struct RunPlan {
  RunShape shape;
  int64_t numel, channels, inner, period;
  const acc_t* b_eff;            // `channels` values, or null when only the layout matters
  std::vector<acc_t> table;      // Periodic: table[k] = b_eff[(k % period) / inner]

  RunPlan(const ChannelLayout& l, const acc_t* bias) : numel(l.numel), channels(l.channels),
      inner(l.inner),
      period(l.channels * l.inner), b_eff(bias) {
    if (channels == 1 || inner >= kConstantMin) {
      shape = RunShape::Constant;
    } else if (period <= kPeriodicMax) {
      shape = RunShape::Periodic;
      if (b_eff != nullptr) {  // the backward of save="output"/"mask" needs no bias values
        // One period, then its start repeated: runs of up to kTableRun start anywhere in it.
        table.resize(period + std::min(kTableRun, l.numel));
        for (int64_t c = 0; c < channels; ++c)
          std::fill_n(table.begin() + c * inner, inner, b_eff[c]);
        for (size_t k = period; k < table.size(); ++k) table[k] = table[k - period];
      }
    } else {
      shape = inner == 1 ? RunShape::Sweep : RunShape::Constant;
    }
  }

  // Calls f.constant(i, n, c) for a run of channel c, or f.stream(i, n, offset) for a run whose
  // bias values are contiguous at `bias_base() + offset` (b_eff for Sweep, table for Periodic).
  template <typename F>
  void visit(int64_t begin, int64_t end, F& f) const {
    int64_t i = begin;
    while (i < end) {
      int64_t n;
      switch (shape) {
        case RunShape::Constant:
          n = std::min(end - i, inner - i % inner);
          f.constant(i, n, (i / inner) % channels);
          break;
        case RunShape::Periodic:
          n = std::min(end - i, kTableRun);  // end - i <= numel
          f.stream(i, n, i % period);
          break;
        default:  // Sweep
          n = std::min(end - i, channels - i % channels);
          f.stream(i, n, i % channels);
          break;
      }
      i += n;
    }
  }

  const acc_t* bias_base() const { return shape == RunShape::Periodic ? table.data() : b_eff; }
  int64_t stream_len() const {
    return shape == RunShape::Periodic ? period + std::min(kTableRun, numel) : channels;
  }
  // Adds sums kept per position of the periodic table (stream_len() values) into per-channel
  // sums, in a fixed order; position k holds channel (k % period) / inner.
  void fold_table_sums(const acc_t* sums, acc_t* channel_sums) const {
    const int64_t len = stream_len();
    for (int64_t base = 0; base < len; base += period) {
      const acc_t* s = sums + base;
      const int64_t n = std::min(period, len - base);
      for (int64_t c = 0, k = 0; c < channels && k < n; ++c)
        for (int64_t e = 0; e < inner && k < n; ++e, ++k) channel_sums[c] += s[k];
    }
  }
};

// The backward's tiles: a fixed function of the shape (never of the thread count), so the
// per-channel partial sums, and their ordered reduction, are bitwise reproducible.
struct TileGrid {
  int64_t rows;            // number of (channels * inner) rows
  int64_t row_block;       // rows per tile
  int64_t row_blocks;
  int64_t channel_block;   // channels per tile
  int64_t channel_blocks;
  int64_t chunk;           // elements of a channel's stretch per tile (Constant)
  int64_t chunks;
  int64_t partial_rows() const { return row_blocks * chunks; }
  int64_t tiles() const { return row_blocks * channel_blocks * chunks; }
};

template <typename acc_t>
TileGrid make_tiles(const ChannelLayout& l, const RunPlan<acc_t>& runs) {
  TileGrid g{};
  const int64_t row_len = l.channels * l.inner;
  g.rows = row_len > 0 ? l.numel / row_len : 0;
  g.chunk = 1;
  g.chunks = 1;
  g.channel_block = l.channels;
  if (runs.shape == RunShape::Constant) {
    g.chunk = std::min(l.inner, kInnerChunk);
    g.chunks = (l.inner + g.chunk - 1) / g.chunk;
    g.channel_block = std::clamp<int64_t>((kChannelBlock + g.chunk - 1) / g.chunk, 1, l.channels);
  } else if (runs.shape == RunShape::Sweep) {
    g.channel_block = std::min(kChannelBlock, l.channels);
  }
  g.channel_blocks = (l.channels + g.channel_block - 1) / g.channel_block;
  const int64_t wanted = std::max<int64_t>(1, l.numel / kTileElems);
  int64_t blocks = (wanted + g.channel_blocks * g.chunks - 1) / (g.channel_blocks * g.chunks);
  // Bound the partial-sum buffer (partial_rows x channels) to a small fraction of the tensor.
  blocks = std::min(blocks, std::max<int64_t>(1, l.numel / (64 * l.channels * g.chunks)));
  blocks = std::clamp<int64_t>(blocks, 1, std::max<int64_t>(g.rows, 1));
  g.row_block = (std::max<int64_t>(g.rows, 1) + blocks - 1) / blocks;
  g.row_blocks = (std::max<int64_t>(g.rows, 1) + g.row_block - 1) / g.row_block;
  return g;
}

}  // namespace tat_ext::cpu::CPU_CAPABILITY
