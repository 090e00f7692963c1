// CUDA's language extensions and the device intrinsics the trelu kernels use, for a host C++
// compiler: the CPU execution harness compiles csrc/cuda/*.cu with this directory first on the
// include path (see cuda_emu.h for how threads run).
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_emu.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one instance per kernel, shared by the running block's threads

#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)
#define __shfl_xor_sync(...) ::cuda_emu::shfl_xor(__FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(...) ::cuda_emu::ballot(__FILE__, __LINE__, __VA_ARGS__)

// Round-to-nearest arithmetic: the harness compiles with -ffp-contract=off, so a plain + or *
// is one correctly rounded operation, as these intrinsics are on the GPU.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }

inline uint64_t __umul64hi(uint64_t a, uint64_t b) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
}

enum cudaError_t { cudaSuccess = 0 };

inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  ::cuda_emu::note_store(p, bytes);
  std::memset(p, value, bytes);
  return cudaSuccess;
}
