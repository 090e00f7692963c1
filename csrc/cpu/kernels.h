// The vectorized CPU kernels of one instruction set. csrc/cpu/isa/kernels_<isa>.cpp compiles
// trelu_kernels.h once per instruction set, each with its own compiler flags (setup.py,
// CMakeLists.txt); trelu_cpu.cpp (baseline code) picks one at run time (cpu_dispatch.h).
// This header is light and instruction-set neutral: it declares, it defines no code.
#pragma once

#include "../trelu_plan.h"

namespace tat_ext::cpu {

struct IsaKernels {
  // y (and the mask) of the plan.
  void (*forward)(ForwardPlan& p, double slope, double scale, double out_shift);
  // grad_x of the plan; when p.want_bias_grad, also the per-channel sums of dL/dz into
  // grad_bias (p.layout.channels values of the accumulation type: double for fp64, else float).
  void (*backward)(BackwardPlan& p, double slope, double scale, double out_shift,
                   void* grad_bias);
};

// One per compiled instruction set; the namespaces are the values of CPU_CAPABILITY.
namespace DEFAULT { IsaKernels isa_kernels(); }
namespace AVX2 { IsaKernels isa_kernels(); }
namespace AVX512 { IsaKernels isa_kernels(); }

}  // namespace tat_ext::cpu
