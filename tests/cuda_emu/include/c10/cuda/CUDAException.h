// The CPU harness's stand-in for c10's CUDA error checks: the emulator reports kernel faults by
// throwing cuda_emu::Error, so there is nothing left to check after a launch.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
#define C10_CUDA_CHECK(expr)                                                      \
  do {                                                                            \
    if ((expr) != cudaSuccess) throw std::runtime_error("CUDA call failed: " #expr); \
  } while (0)
