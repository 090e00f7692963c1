// The CPU harness's stand-in for c10's TORCH_CHECK: throws std::runtime_error with the message.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace cuda_emu {
template <typename... Args>
[[noreturn]] void check_failed(const char* cond, const Args&... args) {
  std::ostringstream msg;
  msg << "check failed: " << cond << ": ";
  (msg << ... << args);
  throw std::runtime_error(msg.str());
}
}  // namespace cuda_emu

#define TORCH_CHECK(cond, ...) \
  ((cond) ? (void)0 : ::cuda_emu::check_failed(#cond, ##__VA_ARGS__))
