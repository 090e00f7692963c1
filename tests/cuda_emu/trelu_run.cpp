// run_case: see trelu_run.h.
#include "trelu_run.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_emu.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <sstream>

#include "cuda/trelu_cuda.h"
#include "trelu_math.h"

namespace trelu_emu {
namespace {

using tat_ext::SaveKind;
using tat_ext::TReluCoeffs;
using tat_ext::cuda::acc_type_of;
using tat_ext::cuda::BackwardLaunch;
using tat_ext::cuda::BackwardParams;
using tat_ext::cuda::ForwardParams;

// Bound on the number of roundings between a dL/dz term and grad_bias, before the second stage
// (a thread's VEC terms and its warp/block folds, or a column thread's blocked walk down at most
// a few hundred rows, as in this harness) and per second-stage level (16 serial terms per thread
// and a tree over at most 256 threads): |error| <= (first + per_level * levels) * u * sum |dz|
// (trelu_backward.cu derives the kernels' bound).
constexpr int kFirstStageRoundings = 64;
constexpr int kRoundingsPerLevel = 24;

// An allocation that ends exactly where the tensor ends (AddressSanitizer flags the element
// past it), starting `offset` elements past a 64-byte boundary.
template <typename T>
class Buffer {
 public:
  Buffer(int64_t n, int offset, T fill) : n_(n) {
    void* raw = nullptr;
    const size_t bytes = static_cast<size_t>(n + offset) * sizeof(T);
    if (posix_memalign(&raw, 64, bytes == 0 ? 1 : bytes) != 0) throw std::bad_alloc();
    raw_.reset(raw);
    p_ = static_cast<T*>(raw) + offset;
    for (int64_t i = 0; i < n; ++i) p_[i] = fill;
  }
  T* data() const { return p_; }
  int64_t size() const { return n_; }
  T& operator[](int64_t i) const { return p_[i]; }
  size_t bytes() const { return static_cast<size_t>(n_) * sizeof(T); }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> raw_;
  T* p_ = nullptr;
  int64_t n_;
};

template <typename T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <typename scalar_t, typename acc_t>
acc_t smallest_positive() {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) return std::ldexp(acc_t(1), -24);
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) return std::ldexp(acc_t(1), -133);
  return std::numeric_limits<scalar_t>::denorm_min();
}

const char* kind_name(SaveKind k) {
  return k == SaveKind::Input ? "input" : k == SaveKind::Output ? "output" : "mask";
}

template <typename scalar_t>
class Runner {
  using acc_t = acc_type_of<scalar_t>;

 public:
  Runner(const Case& c, Outcome& out)
      : c_(c),
        out_(out),
        n_(c.layout.numel()),
        channels_(c.layout.channels),
        inner_(c.layout.inner),
        words_((n_ + 31) / 32),
        x_(n_, c.off.x, scalar_t(0.0f)),
        grad_y_(n_, c.off.grad_y, scalar_t(0.0f)),
        b_eff_(channels_, 0, acc_t(0)) {
    make_inputs();
    // save="input"/"output": TReLU's coefficients (y > 0 exactly when z > 0); save="mask": a
    // general transform (negative slope and scale, an output shift).
    exact_ = {acc_t(0.4259071946), acc_t(1.3011191752), acc_t(0),
              smallest_positive<scalar_t, acc_t>(), acc_t(1.3011191752),
              acc_t(1.3011191752 * 0.4259071946)};
    general_ = {acc_t(-0.3), acc_t(-0.9), acc_t(-0.4), -std::numeric_limits<acc_t>::infinity(),
                acc_t(-0.9), acc_t(-0.9 * -0.3)};
    if (!c.bias_grad_only) {
      y_exact_ = reference_forward(exact_, nullptr);
      y_general_ = reference_forward(general_, &mask_);
    }
  }

  // All runs, blocks and threads in `order`; returns the grad_bias of every backward run.
  std::vector<std::vector<acc_t>> run_all(cuda_emu::Order order) {
    cuda_emu::set_order(order);
    descending_ = order == cuda_emu::Order::Descending;
    std::vector<std::vector<acc_t>> bias_grads;
    if (c_.bias_grad_only) {
      bias_grads.push_back(run_backward(SaveKind::Input, true));
      return bias_grads;
    }
    run_forward(exact_, false, y_exact_);
    run_forward(general_, true, y_general_);
    for (SaveKind kind : {SaveKind::Input, SaveKind::Output, SaveKind::Mask}) {
      for (bool bias_grad : {true, false}) bias_grads.push_back(run_backward(kind, bias_grad));
    }
    return bias_grads;
  }

 private:
  int64_t channel(int64_t i) const { return i / inner_ % channels_; }

  void make_inputs() {
    std::mt19937_64 rng(std::hash<std::string>{}(c_.name) ^ static_cast<uint64_t>(c_.dtype));
    std::normal_distribution<double> normal;
    // Biases representable in scalar_t, so that x = -b gives z == 0 exactly (the tie at zero).
    for (int64_t ch = 0; ch < channels_; ++ch) {
      b_eff_[ch] = static_cast<acc_t>(scalar_t(static_cast<acc_t>(0.5 * normal(rng))));
    }
    for (int64_t i = 0; i < n_; ++i) {
      x_[i] = i % 13 == 5 ? scalar_t(-b_eff_[channel(i)]) : scalar_t(acc_t(normal(rng)));
      // Same-signed gradients make a long serial sum drift (the accuracy cases).
      const double g = normal(rng);
      grad_y_[i] = scalar_t(acc_t(c_.positive_grad ? std::fabs(g) + 0.1 : g));
    }
  }

  std::vector<scalar_t> reference_forward(const TReluCoeffs<acc_t>& k,
                                          std::vector<uint32_t>* mask) const {
    std::vector<scalar_t> y(n_);
    if (mask != nullptr) mask->assign(words_, 0);
    for (int64_t i = 0; i < n_; ++i) {
      const acc_t z = static_cast<acc_t>(x_[i]) + b_eff_[channel(i)];
      y[i] = scalar_t(tat_ext::trelu_value(z, k));
      if (mask != nullptr && tat_ext::tat_positive(z)) (*mask)[i / 32] |= 1u << (i % 32);
    }
    return y;
  }

  std::string what(const char* pass) const {
    std::ostringstream s;
    s << dtype_name(c_.dtype) << " " << c_.name << " [" << c_.layout.outer << "x"
      << c_.layout.channels << "x" << c_.layout.inner << "] " << pass
      << (descending_ ? " (descending order)" : "") << ": ";
    return s.str();
  }

  void error(const std::string& prefix, const std::string& msg) {
    out_.errors.push_back(prefix + msg);
  }

  void take_store_errors(const std::string& prefix) {
    for (const std::string& e : cuda_emu::take_store_errors()) error(prefix, e);
  }

  template <typename T>
  void compare(const std::string& prefix, const char* name, const T* got, const T* want,
               int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      if (!same_bits(got[i], want[i])) {
        int64_t bad = 0;
        for (int64_t j = i; j < n; ++j) bad += !same_bits(got[j], want[j]);
        error(prefix, std::string(name) + ": " + std::to_string(bad) + " elements differ from "
                      "the reference, the first at [" + std::to_string(i) + "]");
        return;
      }
    }
  }

  bool aligned(int offset) const { return offset * sizeof(scalar_t) % 16 == 0; }

  void run_forward(const TReluCoeffs<acc_t>& k, bool with_mask,
                   const std::vector<scalar_t>& y_ref) {
    const std::string prefix = what(with_mask ? "forward+mask" : "forward");
    Buffer<scalar_t> y(n_, c_.off.y, scalar_t(std::numeric_limits<float>::quiet_NaN()));
    Buffer<uint32_t> mask(with_mask ? words_ : 0, 0, 0xa5a5a5a5u);
    cuda_emu::track("y", y.data(), y.bytes(), sizeof(scalar_t));
    cuda_emu::track("mask", mask.data(), mask.bytes(), sizeof(uint32_t));
    const ForwardParams<scalar_t, acc_t> p{x_.data(), y.data(),
                                           with_mask ? mask.data() : nullptr,
                                           b_eff_.data(), n_, channels_, inner_, k};
    try {
      tat_ext::cuda::launch_trelu_forward<scalar_t>(p, nullptr);
    } catch (const std::exception& e) {
      cuda_emu::take_store_errors();
      return error(prefix, e.what());
    }
    for (const auto& l : cuda_emu::take_launches()) {
      const bool planes = l.signature.find("PlaneGrid") != std::string::npos;
      label(std::string("fwd ") + (planes ? "planes" : "flat") +
            (aligned(c_.off.x) && aligned(c_.off.y) ? " vec" : " scalar") +
            (with_mask ? " mask" : " nomask"));
    }
    take_store_errors(prefix);
    compare(prefix, "y", y.data(), y_ref.data(), n_);
    if (with_mask) compare(prefix, "mask", mask.data(), mask_.data(), words_);
  }

  std::vector<acc_t> run_backward(SaveKind kind, bool bias_grad) {
    const std::string prefix =
        what((std::string("backward ") + kind_name(kind) + (bias_grad ? "+bias" : "")).c_str());
    const TReluCoeffs<acc_t>& k = kind == SaveKind::Mask ? general_ : exact_;
    // The saved tensor: x, y (own allocation at y's offset) or the packed mask.
    Buffer<scalar_t> y_saved(kind == SaveKind::Output ? n_ : 0, c_.off.y, scalar_t(0.0f));
    Buffer<uint32_t> mask(kind == SaveKind::Mask ? words_ : 0, 0, 0);
    for (int64_t i = 0; i < y_saved.size(); ++i) y_saved[i] = y_exact_[i];
    for (int64_t i = 0; i < mask.size(); ++i) mask[i] = mask_[i];

    // Reference: dL/dz per element (acc_t), rounded once to grad_x; per-channel sums in fp64.
    std::vector<scalar_t> gx_ref(n_);
    std::vector<double> sum(channels_), abs_sum(channels_);
    std::vector<acc_t> serial(channels_);
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t ch = channel(i);
      bool positive;
      if (kind == SaveKind::Input) {
        positive = tat_ext::tat_positive(static_cast<acc_t>(x_[i]) + b_eff_[ch]);
      } else if (kind == SaveKind::Output) {
        positive = tat_ext::tat_positive(static_cast<acc_t>(y_exact_[i]));
      } else {
        positive = (mask_[i / 32] >> (i % 32)) & 1u;
      }
      const acc_t dz = tat_ext::trelu_grad(static_cast<acc_t>(grad_y_[i]), positive, k);
      gx_ref[i] = scalar_t(dz);
      sum[ch] += dz;
      abs_sum[ch] += std::fabs(double(dz));
      serial[ch] += dz;
    }

    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    Buffer<scalar_t> grad_x(n_, c_.off.grad_x, scalar_t(std::numeric_limits<float>::quiet_NaN()));
    const BackwardParams<scalar_t, acc_t> p{
        grad_y_.data(),
        kind == SaveKind::Input ? x_.data() : kind == SaveKind::Output ? y_saved.data() : nullptr,
        kind == SaveKind::Mask ? reinterpret_cast<const uint8_t*>(mask.data()) : nullptr,
        grad_x.data(),
        kind == SaveKind::Input ? b_eff_.data() : nullptr,
        n_,
        channels_,
        inner_,
        k,
        kind,
        bias_grad};
    const BackwardLaunch plan = tat_ext::cuda::plan_trelu_backward<scalar_t>(p);
    Buffer<acc_t> workspace(plan.workspace, 0, nan);
    Buffer<acc_t> grad_bias(bias_grad ? channels_ : 0, 0, nan);
    cuda_emu::track("grad_x", grad_x.data(), grad_x.bytes(), sizeof(scalar_t));
    cuda_emu::track("workspace", workspace.data(), workspace.bytes(), sizeof(acc_t));
    cuda_emu::track("grad_bias", grad_bias.data(), grad_bias.bytes(), sizeof(acc_t));
    try {
      tat_ext::cuda::launch_trelu_backward<scalar_t>(p, plan, workspace.data(),
                                                     bias_grad ? grad_bias.data() : nullptr,
                                                     nullptr);
    } catch (const std::exception& e) {
      cuda_emu::take_store_errors();
      error(prefix, e.what());
      return {};
    }
    int levels = 0;
    for (const auto& l : cuda_emu::take_launches()) {
      if (l.signature.find("Params") == std::string::npos) {
        ++levels;  // reduce_channel_partials
        continue;
      }
      const bool planes = l.signature.find("PlaneGrid") != std::string::npos;
      label(std::string("bwd ") + (planes ? "planes" : "columns") +
            (plan.vectorized ? " vec " : " scalar ") + kind_name(kind) +
            (bias_grad ? " bias" : " nobias"));
    }
    if (bias_grad && n_ > 0) ++out_.reduce_levels[levels];
    take_store_errors(prefix);
    compare(prefix, "grad_x", grad_x.data(), gx_ref.data(), n_);
    if (!bias_grad) return {};

    // |error| <= roundings * u * sum |dz| (u: unit roundoff of acc_t).
    const double u = std::ldexp(1.0, -std::numeric_limits<acc_t>::digits);
    const double roundings = kFirstStageRoundings + kRoundingsPerLevel * levels;
    out_.bias_bound_ulps = std::max(out_.bias_bound_ulps, roundings);
    for (int64_t ch = 0; ch < channels_; ++ch) {
      const double got = grad_bias[ch];
      const double err = std::fabs(got - sum[ch]);
      const double scale = u * abs_sum[ch];
      if (!(err <= roundings * scale)) {  // also NaN: a slot read before it was written
        std::ostringstream s;
        s << "grad_bias[" << ch << "] = " << got << ", fp64 sum " << sum[ch] << ": error "
          << err << " exceeds " << roundings << " roundings of sum |dz| = " << abs_sum[ch];
        error(prefix, s.str());
        break;
      }
      if (scale > 0) {
        out_.worst_bias_ulps = std::max(out_.worst_bias_ulps, err / scale);
        const double serial_err = std::fabs(double(serial[ch]) - sum[ch]);
        out_.serial_bias_ulps = std::max(out_.serial_bias_ulps, serial_err / scale);
      }
    }
    return std::vector<acc_t>(grad_bias.data(), grad_bias.data() + channels_);
  }

  void label(const std::string& path) {
    ++out_.paths[std::string(dtype_name(c_.dtype)) + " " + path];
  }

  const Case& c_;
  Outcome& out_;
  const int64_t n_, channels_, inner_, words_;
  Buffer<scalar_t> x_, grad_y_;
  Buffer<acc_t> b_eff_;
  TReluCoeffs<acc_t> exact_{}, general_{};
  std::vector<scalar_t> y_exact_, y_general_;
  std::vector<uint32_t> mask_;
  bool descending_ = false;
};

template <typename scalar_t>
void run_typed(const Case& c, Outcome& out) {
  Runner<scalar_t> runner(c, out);
  const auto ascending = runner.run_all(cuda_emu::Order::Ascending);
  if (!c.reverse_too) return;
  const auto descending = runner.run_all(cuda_emu::Order::Descending);
  cuda_emu::set_order(cuda_emu::Order::Ascending);
  for (size_t r = 0; r < ascending.size() && r < descending.size(); ++r) {
    if (ascending[r].size() == descending[r].size() &&
        std::memcmp(ascending[r].data(), descending[r].data(),
                    ascending[r].size() * sizeof(ascending[r][0])) == 0) {
      continue;
    }
    out.errors.push_back(std::string(dtype_name(c.dtype)) + " " + c.name +
                         ": grad_bias depends on the order in which threads run (a race)");
    return;
  }
}

}  // namespace

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "f32";
    case DType::Float64: return "f64";
    case DType::Float16: return "f16";
    default: return "bf16";
  }
}

Outcome run_case(const Case& c) {
  Outcome out;
  try {
    switch (c.dtype) {
      case DType::Float32: run_typed<float>(c, out); break;
      case DType::Float64: run_typed<double>(c, out); break;
      case DType::Float16: run_typed<c10::Half>(c, out); break;
      case DType::BFloat16: run_typed<c10::BFloat16>(c, out); break;
    }
  } catch (const std::exception& e) {
    out.errors.push_back(std::string(dtype_name(c.dtype)) + " " + c.name + ": " + e.what());
  }
  return out;
}

}  // namespace trelu_emu
