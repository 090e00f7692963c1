// Every kernel launch of the trelu kernels goes through launch_kernel: the one place that uses the
// <<<>>> syntax, so that a host C++ compiler can compile the kernel files too. The CPU execution
// harness (tests/cuda_emu) does that, with its own cuda_runtime.h, and runs each GPU thread of a
// launch as a fiber.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

namespace tat_ext::cuda {

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                   const Args&... args) {
#if defined(__CUDACC__)
  kernel<<<grid, block, 0, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  cuda_emu::launch(kernel, grid, block, stream, args...);
#endif
}

}  // namespace tat_ext::cuda
