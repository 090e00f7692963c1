// CPU kernels of the fused transformed Leaky ReLU: SIMD over at::vec, threads over at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../trelu_math.h"
#include "../trelu_plan.h"
#include "acc_io.h"
#include "channel_offsets.h"
#include "channel_runs.h"
#include "mask_bits.h"
#include "vec_ops.h"

namespace tat_ext::cpu {
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

constexpr int64_t kBlockSteps = 32;  // vector steps summed per block of a constant run

// Backward over runs: grad_x = dL/dz, and (kSum) dL/dz summed per channel in a fixed order.
template <typename scalar_t, SaveKind kKind, bool kSum>
struct BackwardRuns {
  using IO = AccIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;

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
    // A run's sum is blocked (kBlockSteps vector steps, then into `total`) so no lane adds more
    // than ~n / (kBlockSteps * width) + kBlockSteps terms in a row: the error of a long serial
    // sum grows with its length.
    Vec total(acc_t(0)), block(acc_t(0));
    acc_t tail_total = 0;
    int64_t j = 0, steps = 0;
    for (; j + IO::kWidth <= n; j += IO::kWidth) {
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
        if constexpr (kSum) {
          if constexpr (kConstBias) {
            block = block + g[p];
          } else {
            (Vec::loadu(sums + off) + g[p]).store(sums + off);
          }
        }
      }
      IO::store(grad_x + i + j, g);
      if constexpr (kSum && kConstBias) {
        if (++steps == kBlockSteps) {
          total = total + block;
          block = Vec(acc_t(0));
          steps = 0;
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
    if constexpr (kSum && kConstBias) {
      __at_align__ acc_t lanes[Vec::size()];
      (total + block).store(lanes);
      acc_t run_total = 0;
      for (int64_t l = 0; l < Vec::size(); ++l) run_total += lanes[l];
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
at::Tensor backward_kernel(BackwardPlan& p, double slope, double scale, double out_shift) {
  using acc_t = typename AccIO<scalar_t>::acc_t;
  const auto k = make_coeffs<acc_t>(p.grad_y.scalar_type(), slope, scale, out_shift);
  const std::vector<acc_t> b_eff =
      kKind == SaveKind::Input ? channel_offsets<acc_t>(p.bias, p.in_shift) : std::vector<acc_t>();
  const RunPlan<acc_t> runs(p.layout, kKind == SaveKind::Input ? b_eff.data() : nullptr);
  const TileGrid g = make_tiles(p.layout, runs);
  const int64_t channels = p.layout.channels;
  const auto acc = p.grad_y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (!p.want_bias_grad) {
    backward_tiles<scalar_t, kKind, false>(p, runs, g, k, nullptr);
    return at::Tensor();
  }
  at::Tensor partial = at::zeros({g.partial_rows(), channels}, p.grad_y.options().dtype(acc));
  backward_tiles<scalar_t, kKind, true>(p, runs, g, k, partial.data_ptr<acc_t>());
  // The per-tile partial sums, pairwise (a tree over the rows, in a fixed order): the same bits
  // for any thread count, and an error that grows with log2(rows) rather than rows.
  acc_t* part = partial.data_ptr<acc_t>();
  const int64_t rows = g.partial_rows();
  for (int64_t stride = 1; stride < rows; stride *= 2) {
    for (int64_t r = 0; r + stride < rows; r += 2 * stride) {
      acc_t* into = part + r * channels;
      const acc_t* from = part + (r + stride) * channels;
      for (int64_t c = 0; c < channels; ++c) into[c] += from[c];
    }
  }
  const at::Tensor grad_bias = rows == 1 ? partial.view({channels}) : partial[0].clone();
  return grad_bias.to(p.bias_grad_dtype);
}

std::tuple<at::Tensor, at::Tensor> trelu_forward_cpu(const at::Tensor& x,
                                                     const c10::optional<at::Tensor>& bias,
                                                     double slope, double scale, double in_shift,
                                                     double out_shift, int64_t channel_dim,
                                                     int64_t save_kind) {
  ForwardPlan p = plan_forward(x, bias, slope, scale, in_shift, out_shift, channel_dim, save_kind);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "trelu_forward_cpu",
                                  [&] { forward_kernel<scalar_t>(p, slope, scale, out_shift); });
  return {p.y, p.mask};
}

std::tuple<at::Tensor, at::Tensor> trelu_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& saved, const c10::optional<at::Tensor>& bias,
    int64_t save_kind, double slope, double scale, double in_shift, double out_shift,
    int64_t channel_dim, c10::optional<at::ScalarType> bias_grad_dtype) {
  BackwardPlan p = plan_backward(grad_y, saved, bias, save_kind, slope, scale, in_shift, out_shift,
                                 channel_dim, bias_grad_dtype);
  if (p.layout.numel == 0) return empty_backward_result(p);
  at::Tensor grad_bias;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.grad_y.scalar_type(),
                                  "trelu_backward_cpu", [&] {
    switch (p.kind) {
      case SaveKind::Input: grad_bias = backward_kernel<scalar_t, SaveKind::Input>(p, slope, scale, out_shift); break;
      case SaveKind::Output: grad_bias = backward_kernel<scalar_t, SaveKind::Output>(p, slope, scale, out_shift); break;
      default: grad_bias = backward_kernel<scalar_t, SaveKind::Mask>(p, slope, scale, out_shift);
    }
  });
  if (!grad_bias.defined()) grad_bias = at::empty({0}, grad_y.options());
  return {p.grad_x, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(tat_ext, CPU, m) {
  m.impl("trelu_forward", &trelu_forward_cpu);
  m.impl("trelu_backward", &trelu_backward_cpu);
}

}  // namespace tat_ext::cpu
