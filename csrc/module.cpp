// The Python extension module tat_ext._C. Importing it runs the static registrations of the
// operators (ops.cpp) and their kernels and autograd; it also reports how it was built, and
// gives Python a direct entry to tat_ext::trelu.
#include <torch/python.h>

#include <optional>
#include <string>

#include "cpu/cpu_dispatch.h"
#include "op_handles.h"

namespace {

// tat_ext::trelu through the dispatcher (autograd, functorch, Python modes all apply). The
// generic torch.ops path boxes every argument and scans all of them for __torch_function__,
// about 4 us a call on a 2 GHz core; this typed entry costs what a built-in op's binding does.
// tat_ext/ops.py uses it for plain tensors only, so __torch_function__ subclasses still take
// the torch.ops path.
at::Tensor trelu_entry(const at::Tensor& x, const std::optional<at::Tensor>& bias, double slope,
                       double scale, double in_shift, double out_shift, int64_t channel_dim,
                       const std::string& save) {
  return tat_ext::trelu_op().call(x, bias, slope, scale, in_shift, out_shift, channel_dim, save);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tat_ext compiled kernels (operators live under torch.ops.tat_ext)";
  m.def("trelu", &trelu_entry, "tat_ext::trelu(x, bias, slope, scale, in_shift, out_shift, "
        "channel_dim, save) for plain tensors", pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("cpu_capability", [] {
          try {
            return tat_ext::cpu::active_capability();
          } catch (const c10::ValueError& e) {  // a bad TAT_EXT_CPU_CAPABILITY: Python's ValueError
            throw pybind11::value_error(e.what_without_backtrace());
          }
        },
        "The instruction set of the CPU kernels in use: the best one this CPU supports, or the "
        "one TAT_EXT_CPU_CAPABILITY forces (ValueError naming it when it cannot)");
  m.def("supported_cpu_capabilities", &tat_ext::cpu::supported_capabilities,
        "The compiled CPU kernel instruction sets this CPU can run, best last");
  m.def("compiled_cpu_capabilities", &tat_ext::cpu::compiled_capabilities,
        "The CPU kernel instruction sets compiled into this build");
#ifdef TAT_EXT_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
}
