// The vectorized CPU kernels of the fused transformed Leaky ReLU (SIMD over at::vec, threads over
// at::parallel_for), compiled once per instruction set by csrc/cpu/isa/kernels_<isa>.cpp with
// CPU_CAPABILITY naming it. Everything here lives in tat_ext::cpu::CPU_CAPABILITY (kernels.h).
// Light headers only: this file is compiled three times.
#pragma once

#ifndef CPU_CAPABILITY
#error "compile through csrc/cpu/isa/kernels_<isa>.cpp, which the build gives CPU_CAPABILITY"
#endif
#define TAT_EXT_ISA_KERNELS 1  // trelu_math.h: per-instruction-set copies of its inline code

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../trelu_math.h"
#include "../trelu_plan.h"
#include "acc_io.h"
#include "channel_offsets.h"
#include "channel_runs.h"
#include "kernels.h"
#include "mask_bits.h"
#include "vec_ops.h"

namespace tat_ext::cpu::CPU_CAPABILITY {
namespace {

// Forward over runs: y = trelu(x + bias), optionally setting the sign bits of z.
template <typename scalar_t>
struct ForwardRuns {
  using IO = AccIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;

  const scalar_t* x;
  scalar_t* y;
  uint32_t* mask;  // null unless save="mask"
  const RunPlan<acc_t>& runs;
  TReluCoeffs<acc_t> k;

  template <bool kConstBias>
  void run(int64_t i, int64_t n, const acc_t* b) {
    const scalar_t* xi = x + i;
    scalar_t* yi = y + i;
    int64_t j = 0;
    for (; j + IO::kWidth <= n; j += IO::kWidth) {
      Vec v[IO::kParts];
      IO::load(xi + j, v);
      uint64_t bits = 0;
      for (int p = 0; p < IO::kParts; ++p) {
        const Vec bias = kConstBias ? Vec(b[0]) : Vec::loadu(b + j + p * Vec::size());
        const Vec z = v[p] + bias;
        if (mask != nullptr) bits |= lane_bits(tat_positive(z)) << (p * Vec::size());
        v[p] = trelu_value(z, k);
      }
      IO::store(yi + j, v);
      if (bits != 0) or_bits(mask, i + j, bits);
    }
    for (; j < n; ++j) {
      const acc_t z = acc_t(xi[j]) + b[kConstBias ? 0 : j];
      yi[j] = static_cast<scalar_t>(trelu_value(z, k));
      if (mask != nullptr && tat_positive(z)) or_bits(mask, i + j, 1);
    }
  }
  void constant(int64_t i, int64_t n, int64_t c) { run<true>(i, n, runs.b_eff + c); }
  void stream(int64_t i, int64_t n, int64_t off) { run<false>(i, n, runs.bias_base() + off); }
};

constexpr int64_t kBlockGroups = 8;  // lane groups summed per block of a constant run

// Backward over runs: grad_x = dL/dz, and (kSum) dL/dz summed per channel in a fixed order.
template <typename scalar_t, SaveKind kKind, bool kSum>
struct BackwardRuns {
  using IO = AccIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  // Lanes of a constant run's sum: one 64-byte vector of scalar_t, the widest IO step of any
  // instruction set (AVX-512), so a multiple of every IO::kWidth.
  static constexpr int64_t kGroup = 64 / sizeof(scalar_t);
  static constexpr int kAcc = kGroup / Vec::size();
  static_assert(kGroup % IO::kWidth == 0, "a lane group is whole IO steps");

  const scalar_t* grad_y;
  const scalar_t* saved;  // x (Input) or y (Output)
  const uint32_t* mask;   // Mask
  scalar_t* grad_x;
  const RunPlan<acc_t>& runs;
  TReluCoeffs<acc_t> k;
  acc_t* stream_sums = nullptr;   // indexed like the bias stream (Sweep/Periodic runs)
  acc_t* channel_sums = nullptr;  // indexed by channel (Constant runs)

  bool scalar_positive(int64_t i, acc_t s, acc_t b) const {
    if constexpr (kKind == SaveKind::Input) return tat_positive(s + b);
    if constexpr (kKind == SaveKind::Output) return tat_positive(s);
    return read_bits(mask, i, 1) != 0;
  }

  template <bool kConstBias>
  void run(int64_t i, int64_t n, const acc_t* b, acc_t* sums) {
    // A constant run's sum keeps kGroup lanes whatever the vector width (kAcc vectors of it),
    // and the scalar tail starts at a multiple of kGroup: so every instruction set adds the same
    // terms in the same order. It is blocked (kBlockGroups groups, then into `total`) so no lane
    // adds more than ~n / (kBlockGroups * kGroup) + kBlockGroups terms in a row: the error of a
    // long serial sum grows with its length.
    constexpr bool kBlocked = kSum && kConstBias;
    Vec total[kAcc], block[kAcc];
    for (int a = 0; a < kAcc; ++a) total[a] = block[a] = Vec(acc_t(0));
    acc_t tail_total = 0;
    int64_t groups = 0;
    const int64_t n_vec = kBlocked ? n / kGroup * kGroup : n / IO::kWidth * IO::kWidth;
    int64_t j = 0;
    for (; j < n_vec; j += IO::kWidth) {
      Vec g[IO::kParts];
      Vec s[IO::kParts];
      uint64_t bits = 0;
      IO::load(grad_y + i + j, g);
      if constexpr (kKind != SaveKind::Mask) IO::load(saved + i + j, s);
      if constexpr (kKind == SaveKind::Mask) bits = read_bits(mask, i + j, IO::kWidth);
      for (int p = 0; p < IO::kParts; ++p) {
        const int64_t off = j + p * Vec::size();
        Vec pos;
        if constexpr (kKind == SaveKind::Input) {
          pos = tat_positive(s[p] + (kConstBias ? Vec(b[0]) : Vec::loadu(b + off)));
        } else if constexpr (kKind == SaveKind::Output) {
          pos = tat_positive(s[p]);
        } else {
          pos = bits_to_lanes<acc_t>(bits >> (p * Vec::size()));
        }
        g[p] = trelu_grad(g[p], pos, k);
        if constexpr (kBlocked) {
          Vec& lane = block[(off % kGroup) / Vec::size()];
          lane = lane + g[p];
        } else if constexpr (kSum) {
          (Vec::loadu(sums + off) + g[p]).store(sums + off);
        }
      }
      IO::store(grad_x + i + j, g);
      if constexpr (kBlocked) {
        if ((j + IO::kWidth) % kGroup == 0 && ++groups == kBlockGroups) {
          for (int a = 0; a < kAcc; ++a) {
            total[a] = total[a] + block[a];
            block[a] = Vec(acc_t(0));
          }
          groups = 0;
        }
      }
    }
    for (; j < n; ++j) {
      const acc_t s = kKind == SaveKind::Mask ? acc_t(0) : acc_t(saved[i + j]);
      const acc_t dz = trelu_grad(acc_t(grad_y[i + j]),
                                  scalar_positive(i + j, s, kKind == SaveKind::Input ? b[kConstBias ? 0 : j] : acc_t(0)), k);
      grad_x[i + j] = static_cast<scalar_t>(dz);
      if constexpr (kSum) {
        if constexpr (kConstBias) tail_total += dz; else sums[j] += dz;
      }
    }
    if constexpr (kBlocked) {
      __at_align__ acc_t lanes[kGroup];
      for (int a = 0; a < kAcc; ++a) (total[a] + block[a]).store(lanes + a * Vec::size());
      acc_t run_total = 0;
      for (int64_t l = 0; l < kGroup; ++l) run_total += lanes[l];
      *sums += run_total + tail_total;
    }
  }
  void constant(int64_t i, int64_t n, int64_t c) {
    run<true>(i, n, kKind == SaveKind::Input ? runs.b_eff + c : nullptr, channel_sums + c);
  }
  void stream(int64_t i, int64_t n, int64_t off) {
    run<false>(i, n, kKind == SaveKind::Input ? runs.bias_base() + off : nullptr,
               kSum ? stream_sums + off : nullptr);
  }
};

template <typename scalar_t>
void forward_kernel(ForwardPlan& p, double slope, double scale, double out_shift) {
  using acc_t = typename AccIO<scalar_t>::acc_t;
  const auto k = make_coeffs<acc_t>(p.x.scalar_type(), slope, scale, out_shift);
  const std::vector<acc_t> b_eff = channel_offsets<acc_t>(p.bias, p.in_shift);
  const RunPlan<acc_t> runs(p.layout, b_eff.data());
  auto* mask = p.mask.numel() > 0 ? reinterpret_cast<uint32_t*>(p.mask.data_ptr<uint8_t>()) : nullptr;
  const scalar_t* x = p.x.data_ptr<scalar_t>();
  scalar_t* y = p.y.data_ptr<scalar_t>();
  const int64_t numel = p.layout.numel;
  const int64_t words = (numel + kMaskWordBits - 1) / kMaskWordBits;
  // Ranges are whole mask words, so no two threads touch the same mask byte.
  at::parallel_for(0, words, kTileElems / kMaskWordBits, [&](int64_t w0, int64_t w1) {
    if (mask != nullptr) std::memset(mask + w0, 0, (w1 - w0) * sizeof(uint32_t));
    ForwardRuns<scalar_t> f{x, y, mask, runs, k};
    runs.visit(w0 * kMaskWordBits, std::min(w1 * kMaskWordBits, numel), f);
  });
}

template <typename scalar_t, SaveKind kKind, bool kSum>
void backward_tiles(BackwardPlan& p, const RunPlan<typename AccIO<scalar_t>::acc_t>& runs,
                    const TileGrid& g, const TReluCoeffs<typename AccIO<scalar_t>::acc_t>& k,
                    typename AccIO<scalar_t>::acc_t* partial) {
  using acc_t = typename AccIO<scalar_t>::acc_t;
  const ChannelLayout& l = p.layout;
  const int64_t row_len = l.channels * l.inner;
  const scalar_t* saved =
      kKind == SaveKind::Mask ? nullptr : static_cast<const scalar_t*>(p.saved.data_ptr());
  const auto* mask = kKind == SaveKind::Mask
                         ? reinterpret_cast<const uint32_t*>(p.saved.data_ptr<uint8_t>())
                         : nullptr;
  const BackwardRuns<scalar_t, kKind, kSum> proto{p.grad_y.data_ptr<scalar_t>(), saved, mask,
                                                  p.grad_x.data_ptr<scalar_t>(), runs, k};
  at::parallel_for(0, g.tiles(), 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> table_sums;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t cb = t % g.channel_blocks;
      const int64_t chunk = (t / g.channel_blocks) % g.chunks;
      const int64_t rb = t / (g.channel_blocks * g.chunks);
      const int64_t r0 = rb * g.row_block, r1 = std::min(g.rows, r0 + g.row_block);
      const int64_t c0 = cb * g.channel_block, c1 = std::min(l.channels, c0 + g.channel_block);
      acc_t* prow = kSum ? partial + (rb * g.chunks + chunk) * l.channels : nullptr;
      auto f = proto;
      f.channel_sums = prow;
      switch (runs.shape) {
        case RunShape::Periodic:
          if (kSum) {
            table_sums.assign(runs.stream_len(), acc_t(0));
            f.stream_sums = table_sums.data();
          }
          runs.visit(r0 * row_len, r1 * row_len, f);
          if (kSum) {
            runs.fold_table_sums(table_sums.data(), prow);
          }
          break;
        case RunShape::Sweep:
          f.stream_sums = prow;
          for (int64_t r = r0; r < r1; ++r) runs.visit(r * row_len + c0, r * row_len + c1, f);
          break;
        default: {  // Constant: one channel's stretch (or its chunk) at a time
          const int64_t i0 = chunk * g.chunk, i1 = std::min(l.inner, i0 + g.chunk);
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t base = r * row_len + c * l.inner;
              runs.visit(base + i0, base + i1, f);
            }
        }
      }
    }
  });
}

template <typename scalar_t, SaveKind kKind>
void backward_kernel(BackwardPlan& p, double slope, double scale, double out_shift,
                     typename AccIO<scalar_t>::acc_t* grad_bias) {
  using acc_t = typename AccIO<scalar_t>::acc_t;
  const auto k = make_coeffs<acc_t>(p.grad_y.scalar_type(), slope, scale, out_shift);
  const std::vector<acc_t> b_eff =
      kKind == SaveKind::Input ? channel_offsets<acc_t>(p.bias, p.in_shift) : std::vector<acc_t>();
  const RunPlan<acc_t> runs(p.layout, kKind == SaveKind::Input ? b_eff.data() : nullptr);
  const TileGrid g = make_tiles(p.layout, runs);
  const int64_t channels = p.layout.channels;
  if (!p.want_bias_grad) {
    backward_tiles<scalar_t, kKind, false>(p, runs, g, k, nullptr);
    return;
  }
  std::vector<acc_t> partial(g.partial_rows() * channels, acc_t(0));
  backward_tiles<scalar_t, kKind, true>(p, runs, g, k, partial.data());
  // The per-tile partial sums, pairwise (a tree over the rows, in a fixed order): the same bits
  // for any thread count, and an error that grows with log2(rows) rather than rows.
  acc_t* part = partial.data();
  const int64_t rows = g.partial_rows();
  for (int64_t stride = 1; stride < rows; stride *= 2) {
    for (int64_t r = 0; r + stride < rows; r += 2 * stride) {
      acc_t* into = part + r * channels;
      const acc_t* from = part + (r + stride) * channels;
      for (int64_t c = 0; c < channels; ++c) into[c] += from[c];
    }
  }
  std::copy(part, part + channels, grad_bias);
}

void forward_entry(ForwardPlan& p, double slope, double scale, double out_shift) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "trelu_forward_cpu",
                                  [&] { forward_kernel<scalar_t>(p, slope, scale, out_shift); });
}

void backward_entry(BackwardPlan& p, double slope, double scale, double out_shift,
                    void* grad_bias) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.grad_y.scalar_type(),
                                  "trelu_backward_cpu", [&] {
    auto* sums = static_cast<typename AccIO<scalar_t>::acc_t*>(grad_bias);
    switch (p.kind) {
      case SaveKind::Input: backward_kernel<scalar_t, SaveKind::Input>(p, slope, scale, out_shift, sums); break;
      case SaveKind::Output: backward_kernel<scalar_t, SaveKind::Output>(p, slope, scale, out_shift, sums); break;
      default: backward_kernel<scalar_t, SaveKind::Mask>(p, slope, scale, out_shift, sums);
    }
  });
}

}  // namespace

IsaKernels isa_kernels() { return {&forward_entry, &backward_entry}; }

}  // namespace tat_ext::cpu::CPU_CAPABILITY
