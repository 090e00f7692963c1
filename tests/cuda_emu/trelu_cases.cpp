// The trelu CUDA kernels (csrc/cuda/trelu_forward.cu, trelu_backward.cu, compiled for the CPU)
// run on the emulator over a case grid that crosses every launch decision: the plane / flat /
// column grids on both sides of each threshold, 16-byte and scalar accesses (misaligned
// pointers, rows that are not whole packs), masks on the plane and the flat grid, C = 1 and
// C = 70001, one to three second-stage levels, every dtype and save kind. The run fails unless
// every path was reached (the coverage table it prints).
//
//   run_cases            all cases          run_cases SUBSTRING   cases whose name contains it
#include <chrono>
#include <map>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "emu_self_test.h"
#include "trelu_run.h"

using trelu_emu::Case;
using trelu_emu::DType;
using trelu_emu::Offsets;

namespace {

constexpr Offsets kAligned{};
constexpr Offsets kMisaligned{1, 1, 1, 1};  // one element off: every access scalar

std::vector<Case> case_grid() {
  const DType f32 = DType::Float32, f64 = DType::Float64, f16 = DType::Float16,
              bf16 = DType::BFloat16;
  std::vector<Case> cases = {
      // fp32 (16-byte pack = 4 elements): plane grid from 96 slots = 384 elements per plane.
      {"one element", f32, {1, 1, 1}, kAligned},
      {"C=1, several chunks", f32, {1, 1, 4099}, kAligned, true},
      {"C=1, misaligned", f32, {1, 1, 4099}, kMisaligned},
      {"planes at the threshold, mask on planes", f32, {3, 5, 384}, kAligned, true},
      {"planes just below the threshold", f32, {3, 5, 383}, kAligned},
      {"planes straddling packs, mask on the flat grid", f32, {2, 3, 385}, kAligned},
      {"planes of two chunks", f32, {2, 4, 1000}, kAligned, true},
      {"long planes, mask on planes", f32, {2, 3, 4160}, kAligned},
      {"bias on dim 0", f32, {1, 6, 5000}, kAligned},
      {"misaligned planes at the threshold", f32, {3, 5, 96}, kMisaligned},
      {"misaligned planes just below", f32, {3, 5, 95}, kMisaligned, true},
      {"x misaligned only", f32, {2, 3, 400}, {1, 0, 0, 0}},
      {"y misaligned only", f32, {2, 3, 400}, {0, 1, 0, 0}},
      {"grad_y misaligned only", f32, {2, 3, 400}, {0, 0, 1, 0}},
      {"grad_x misaligned only", f32, {2, 3, 400}, {0, 0, 0, 1}},
      {"8-byte aligned", f32, {2, 3, 400}, {2, 2, 2, 2}},
      {"channels_last C=64", f32, {150, 64, 1}, kAligned, true},
      {"channels_last C=5", f32, {45, 5, 1}, kAligned},
      {"channels_last C=300 (225-thread blocks)", f32, {7, 300, 1}, kAligned, true},
      {"channels_last C=1100 (two column blocks)", f32, {3, 1100, 1}, kAligned},
      {"channels_last misaligned", f32, {40, 64, 1}, kMisaligned},
      {"C=70001", f32, {3, 70001, 1}, kAligned},
      {"inner 2: packs across channels", f32, {5, 6, 2}, kAligned},
      {"inner 3", f32, {4, 7, 3}, kAligned},
      {"inner 12", f32, {5, 6, 12}, kAligned},
      {"many row blocks", f32, {5000, 24, 1}, kAligned},
      {"(32,64,17,17) channels_last: two levels", f32, {9248, 64, 1}, kAligned, true},
      {"two levels, inner 3", f32, {1720, 32, 3}, kAligned},
      {"zero size", f32, {0, 4, 9}, kAligned},
      {"zero size, C=1", f32, {0, 1, 1}, kAligned},
      // fp64 (2 elements per pack): plane grid from 192.
      {"planes at the threshold", f64, {3, 5, 192}, kAligned},
      {"planes just below the threshold", f64, {3, 5, 191}, kAligned},
      {"misaligned planes", f64, {3, 5, 192}, kMisaligned},
      {"channels_last C=64", f64, {40, 64, 1}, kAligned},
      {"channels_last C=5", f64, {40, 5, 1}, kAligned},
      {"channels_last misaligned", f64, {40, 64, 1}, kMisaligned},
      // fp16 / bf16 (8 elements per pack): plane grid from 768.
      {"planes at the threshold", f16, {3, 5, 768}, kAligned},
      {"planes just below the threshold", f16, {3, 5, 767}, kAligned},
      {"misaligned planes", f16, {3, 5, 768}, kMisaligned},
      {"channels_last C=64", f16, {40, 64, 1}, kAligned, true},
      {"channels_last C=12", f16, {40, 12, 1}, kAligned},
      {"channels_last misaligned", f16, {40, 64, 1}, kMisaligned},
      {"planes at the threshold", bf16, {3, 5, 768}, kAligned},
      {"planes straddling packs", bf16, {2, 3, 770}, kAligned},
      {"misaligned planes", bf16, {3, 5, 768}, kMisaligned},
      {"channels_last C=64", bf16, {40, 64, 1}, kAligned},
      {"channels_last C=12", bf16, {40, 12, 1}, kAligned},
      {"channels_last misaligned", bf16, {40, 64, 1}, kMisaligned},
  };
  // Three second-stage levels (more than 128^2 partial sums per channel) take 16.8M elements at
  // least; here also two blocked folds of each column thread's walk (32 rows).
  Case three_levels{"three levels, column walks of 32 rows", f32, {8224, 32, 64}, kAligned};
  Case plane_levels{"plane grid, two levels", f32, {65, 32, 1024}, kAligned};
  for (Case* c : {&three_levels, &plane_levels}) {
    c->bias_grad_only = true;
    cases.push_back(*c);
  }
  // grad_bias accuracy: 2^20 same-signed terms per channel, where a serial fp32 sum drifts
  // beyond the bound the kernels must meet.
  Case plane_acc{"accuracy: C=1, 2^20 terms", f32, {1, 1, 1 << 20}, kAligned};
  Case column_acc{"accuracy: channels_last, 2^20 terms per channel", f32, {1 << 20, 2, 1},
                  kAligned};
  for (Case* c : {&plane_acc, &column_acc}) {
    c->bias_grad_only = true;
    c->positive_grad = true;
    cases.push_back(*c);
  }
  return cases;
}

// Every launch decision, for every dtype.
std::vector<std::string> required_paths() {
  std::vector<std::string> paths;
  for (const char* dtype : {"f32", "f64", "f16", "bf16"}) {
    for (const char* grid : {"planes", "flat"}) {
      for (const char* access : {"vec", "scalar"}) {
        for (const char* mask : {"mask", "nomask"}) {
          paths.push_back(std::string(dtype) + " fwd " + grid + " " + access + " " + mask);
        }
      }
    }
    for (const char* grid : {"planes", "columns"}) {
      for (const char* access : {"vec", "scalar"}) {
        for (const char* kind : {"input", "output", "mask"}) {
          for (const char* bias : {"bias", "nobias"}) {
            paths.push_back(std::string(dtype) + " bwd " + grid + " " + access + " " + kind +
                            " " + bias);
          }
        }
      }
    }
  }
  return paths;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  const auto t0 = std::chrono::steady_clock::now();
  int failures = 0;
  for (const std::string& f : run_emu_self_tests()) {
    std::printf("FAIL emulator self-test: %s\n", f.c_str());
    ++failures;
  }
  std::printf("emulator self-tests: %s (%.2fs)\n", failures ? "FAILED" : "ok", seconds_since(t0));

  std::map<std::string, int> paths;
  std::map<int, int> levels;
  int ran = 0;
  for (const Case& c : case_grid()) {
    if (!only.empty() && (std::string(trelu_emu::dtype_name(c.dtype)) + " " + c.name)
                                 .find(only) == std::string::npos) {
      continue;
    }
    const auto t = std::chrono::steady_clock::now();
    const trelu_emu::Outcome out = trelu_emu::run_case(c);
    ++ran;
    for (const auto& [p, n] : out.paths) paths[p] += n;
    for (const auto& [l, n] : out.reduce_levels) levels[l] += n;
    std::printf("%s %-4s %-50s %8lld x %6lld x %5lld  grad_bias err %5.1f u*sum|dz|  %.2fs\n",
                out.errors.empty() ? "ok  " : "FAIL", trelu_emu::dtype_name(c.dtype),
                c.name.c_str(), static_cast<long long>(c.layout.outer),
                static_cast<long long>(c.layout.channels),
                static_cast<long long>(c.layout.inner), out.worst_bias_ulps, seconds_since(t));
    for (const std::string& e : out.errors) std::printf("     %s\n", e.c_str());
    failures += !out.errors.empty();
    if (c.positive_grad) {
      std::printf("     a serial fp32 sum of the same terms: err %.1f u*sum|dz|\n",
                  out.serial_bias_ulps);
      if (out.errors.empty() && !(out.serial_bias_ulps > out.bias_bound_ulps)) {
        std::printf("FAIL this accuracy case would not catch a serial sum: make it larger\n");
        ++failures;
      }
    }
    std::fflush(stdout);
  }

  if (only.empty()) {
    std::printf("\ncoverage (runs per launch path):\n");
    for (const std::string& p : required_paths()) {
      const int n = paths.count(p) ? paths[p] : 0;
      std::printf("  %5d  %s%s\n", n, p.c_str(), n ? "" : "   <- NOT REACHED");
      failures += n == 0;
    }
    std::printf("  second-stage levels (runs):");
    for (const auto& [l, n] : levels) std::printf(" %d level(s): %d", l, n);
    std::printf("\n");
    if (!levels.count(1) || !levels.count(2) || !levels.count(3)) {
      std::printf("FAIL one, two and three second-stage levels must all be reached\n");
      ++failures;
    }
  }
  std::printf("\n%d case(s), %d failure(s), %.1fs\n", ran, failures, seconds_since(t0));
  return failures == 0 ? 0 : 1;
}
