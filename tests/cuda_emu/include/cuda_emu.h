// A CPU emulator for CUDA kernels, small enough to read: a launch runs its blocks one after the
// other, and each GPU thread of a block as a fiber (its own stack; cuda_emu.cpp switches stacks).
// A fiber runs until it reaches a synchronization point (__syncthreads, a warp shuffle or
// ballot) or returns; when no fiber can run, the scheduler completes what all participants have
// reached (a warp op once all 32 lanes wait at it, a barrier once every thread of the block does)
// and reports anything else as an error: a barrier reached by part of the block, a warp op in a
// partial warp or reached by part of a warp, threads waiting at different barriers (deadlock).
//
// __shared__ variables become function-local statics: blocks never run at the same time, so all
// threads of the running block share one instance, as on the GPU.
//
// Stores that the kernels route through TAT_EMU_NOTE_STORE are counted per element of the
// buffers registered with track(), so a test can require every output element to be written
// exactly once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = struct CUstream_st*;

// The running thread's and block's coordinates (set by the scheduler before it resumes a fiber).
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

namespace cuda_emu {

// A kernel misbehaved in a way the GPU would not report reliably (or would hang on).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Order in which the scheduler runs the blocks of a grid and the ready threads of a block.
// Results must not depend on it; running a case under both orders exposes shared-memory races
// whose outcome depends on which thread gets there first.
enum class Order { Ascending, Descending };
void set_order(Order order);

// One launch, as recorded for the caller: the kernel's parameter types (they tell the kernels of
// a file apart) and the launch shape.
struct LaunchRecord {
  std::string signature;
  dim3 grid, block;
};
// Launches since the last call (then cleared).
std::vector<LaunchRecord> take_launches();

// Runs body() once per thread of every block of the grid.
void run_grid(const std::string& signature, dim3 grid, dim3 block, void (*body)(void*),
              void* ctx);

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t /*stream*/,
            const Args&... args) {
  // Each thread receives its own copy of the parameters, as on the GPU.
  struct Ctx {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  } ctx{kernel, std::tuple<std::decay_t<Params>...>(args...)};
  run_grid(
      typeid(kernel).name(), grid, block,
      [](void* c) {
        Ctx& self = *static_cast<Ctx*>(c);
        auto params = self.params;
        std::apply(self.kernel, params);
      },
      &ctx);
}

// Synchronization points (the CUDA spellings below pass the call site).
void syncthreads(const char* file, int line);
enum class WarpOp { ShflXor, Ballot };
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int lane_mask, int width,
                 const char* file, int line);

template <typename T>
T shfl_xor(const char* file, int line, unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a scalar");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_op(WarpOp::ShflXor, mask, bits, lane_mask, width, file, line);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

inline unsigned ballot(const char* file, int line, unsigned mask, int predicate) {
  return static_cast<unsigned>(
      warp_op(WarpOp::Ballot, mask, predicate != 0, 0, 32, file, line));
}

// Write counting: stores into [p, p + bytes) of a tracked buffer count once per element; stores
// that hit no tracked buffer are errors.
void track(const char* name, const void* p, size_t bytes, size_t elem_size);
void note_store(const void* p, size_t bytes);
// Problems found since the last call (elements written 0 or >1 times, stray stores; at most a
// few per buffer), then forgets every tracked buffer.
std::vector<std::string> take_store_errors();

}  // namespace cuda_emu

#define TAT_EMU_NOTE_STORE(ptr, bytes) ::cuda_emu::note_store(ptr, bytes)
