// The CPU kernels for the "default" capability; setup.py and CMakeLists.txt compile this file with
// that instruction set's flags and CPU_CAPABILITY (see csrc/cpu/kernels.h).
#include "../trelu_kernels.h"
