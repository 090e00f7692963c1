// Which instruction set's CPU kernels run (csrc/cpu/kernels.h): the best one this CPU supports
// among those compiled, or the one TAT_EXT_CPU_CAPABILITY=default|avx2|avx512 forces.
#pragma once

#include <string>
#include <vector>

#include "kernels.h"

namespace tat_ext::cpu {

// The kernels to run now. Reads TAT_EXT_CPU_CAPABILITY on every call (a cheap comparison with
// the last value seen), so a test can switch it within one process. Throws a c10::Error naming
// the variable for an unknown value, or a capability this CPU (or this build) lacks.
IsaKernels active_kernels();

// The name of the capability active_kernels() uses.
std::string active_capability();

// The capabilities compiled into this build that this CPU can run, best last.
std::vector<std::string> supported_capabilities();

// The capabilities compiled into this build, whether or not this CPU can run them.
std::vector<std::string> compiled_capabilities();

}  // namespace tat_ext::cpu
