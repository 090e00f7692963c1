// The Python extension module tat_ext._C. Importing it runs the static registrations of the
// operators (ops.cpp) and their CPU/CUDA kernels; it also reports how it was built.
#include <pybind11/pybind11.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "tat_ext compiled kernels (operators live under torch.ops.tat_ext)";
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
