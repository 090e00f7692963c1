// Runtime choice of the CPU kernels' instruction set, in the manner of ATen's DispatchStub.
// Baseline code: compiled without any instruction-set flags.
#include "cpu_dispatch.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <mutex>

namespace tat_ext::cpu {
namespace {

constexpr const char* kEnv = "TAT_EXT_CPU_CAPABILITY";

struct Capability {
  const char* name;
  IsaKernels (*kernels)();
  bool (*cpu_has)();
};

bool always() { return true; }

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
// __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
}
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
#endif

// Every capability of the project, best last; the build defines TAT_EXT_CPU_KERNELS_<ISA> for
// those it compiled (setup.py, CMakeLists.txt).
const std::vector<Capability>& compiled() {
  static const std::vector<Capability> all = {
#ifdef TAT_EXT_CPU_KERNELS_DEFAULT
      {"default", &DEFAULT::isa_kernels, &always},
#endif
#ifdef TAT_EXT_CPU_KERNELS_AVX2
      {"avx2", &AVX2::isa_kernels, &cpu_has_avx2},
#endif
#ifdef TAT_EXT_CPU_KERNELS_AVX512
      {"avx512", &AVX512::isa_kernels, &cpu_has_avx512},
#endif
  };
  return all;
}

std::string known_names() { return "default, avx2 or avx512"; }

const Capability& choose(const std::string& forced) {
  const auto& all = compiled();
  TORCH_CHECK(!all.empty(), "tat_ext was built without CPU kernels");
  if (forced.empty()) {
    for (auto it = all.rbegin(); it != all.rend(); ++it)
      if (it->cpu_has()) return *it;
    TORCH_CHECK(false, "tat_ext: this CPU supports none of the compiled CPU kernels");
  }
  TORCH_CHECK_VALUE(forced == "default" || forced == "avx2" || forced == "avx512", kEnv, "=",
                    forced, " is not a CPU capability; use ", known_names(),
                    " (or leave it unset for the best one this CPU supports)");
  for (const auto& c : all) {
    if (forced != c.name) continue;
    TORCH_CHECK_VALUE(c.cpu_has(), kEnv, "=", forced, ": this CPU does not support ", forced,
                      "; unset it or choose one of the capabilities it supports");
    return c;
  }
  TORCH_CHECK_VALUE(false, kEnv, "=", forced, ": this build of tat_ext has no ", forced,
                    " kernels (built with TAT_EXT_MARCH or TAT_EXT_CPU_VARIANTS)");
}

struct Active {
  std::mutex mutex;
  bool resolved = false;
  std::string env;  // the value it was resolved for
  const Capability* capability = nullptr;
  IsaKernels kernels{};
};

Active& active() {
  static Active a;
  return a;
}

const Capability& resolve(Active& a) {
  const char* value = std::getenv(kEnv);
  const std::string env = value == nullptr ? "" : value;
  if (!a.resolved || env != a.env) {
    const Capability& c = choose(env);  // throws before anything changes
    a.capability = &c;
    a.kernels = c.kernels();
    a.env = env;
    a.resolved = true;
  }
  return *a.capability;
}

}  // namespace

IsaKernels active_kernels() {
  Active& a = active();
  std::lock_guard<std::mutex> lock(a.mutex);
  resolve(a);
  return a.kernels;
}

std::string active_capability() {
  Active& a = active();
  std::lock_guard<std::mutex> lock(a.mutex);
  return resolve(a).name;
}

std::vector<std::string> supported_capabilities() {
  std::vector<std::string> out;
  for (const auto& c : compiled())
    if (c.cpu_has()) out.emplace_back(c.name);
  return out;
}

std::vector<std::string> compiled_capabilities() {
  std::vector<std::string> out;
  for (const auto& c : compiled()) out.emplace_back(c.name);
  return out;
}

}  // namespace tat_ext::cpu
