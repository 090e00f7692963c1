// One case of the trelu CUDA kernels on the emulator: the forward (with and without the packed
// mask) and the backward for every save kind, with and without the bias gradient, checked
// against the shared math (csrc/trelu_math.h) evaluated element by element:
//  - y, the packed mask and grad_x bit for bit;
//  - grad_bias against the fp64 sum of the same dL/dz values, within the error bound of the
//    kernels' summation tree (see trelu_backward.cu);
//  - every element of y, mask, grad_x, grad_bias and every workspace slot written exactly once
//    (all pre-filled with NaN or a bit pattern, so a slot read before it is written shows too);
//  - out-of-bounds reads and writes by AddressSanitizer (the harness is built with it): each
//    buffer is its own allocation, ending where the tensor ends.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace trelu_emu {

enum class DType { Float32, Float64, Float16, BFloat16 };

// A dense tensor as the kernels see it: `outer` runs of `channels` planes of `inner` elements
// (channels == 1: no bias, or the whole tensor one channel).
struct Layout {
  int64_t outer, channels, inner;
  int64_t numel() const { return outer * channels * inner; }
};

// Elements by which each pointer lies past a 64-byte boundary (not a multiple of the 16-byte
// pack: the kernels' scalar fallback). y's offset also applies to the saved y of the backward.
struct Offsets {
  int x = 0, y = 0, grad_y = 0, grad_x = 0;
};

struct Case {
  std::string name;
  DType dtype;
  Layout layout;
  Offsets off;
  bool reverse_too = false;     // run again with blocks and threads in descending order
  bool bias_grad_only = false;  // large cases: only the backward with save="input" and grad_bias
  bool positive_grad = false;   // dL/dy > 0: same-signed terms, which a serial sum lets drift
};

struct Outcome {
  std::vector<std::string> errors;
  std::map<std::string, int> paths;  // what ran: "bwd columns vec mask bias" -> runs
  std::map<int, int> reduce_levels;  // second-stage launches -> runs
  double bias_bound_ulps = 0;        // the bound grad_bias was held to, in u * sum |dz|
  double worst_bias_ulps = 0;        // max |grad_bias - fp64| / (u * sum |dz|)
  double serial_bias_ulps = 0;       // the same for a serial sum in acc_t (the yardstick)
};

Outcome run_case(const Case& c);

const char* dtype_name(DType t);

}  // namespace trelu_emu
