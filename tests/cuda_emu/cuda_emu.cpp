// The fiber scheduler and the write counter of cuda_emu.h.
#include "cuda_emu.h"

#include <cxxabi.h>
#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <cstdlib>
#include <exception>
#include <memory>
#include <sstream>

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_EMU_ASAN 1
#endif
#endif
#ifdef CUDA_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

uint3 threadIdx{};
uint3 blockIdx{};
dim3 blockDim;
dim3 gridDim;

namespace cuda_emu {
namespace {

// A suspended fiber (or the scheduler): make_context prepares one that starts in `entry` on a
// fresh stack; switch_context saves the running one into `from` and resumes `to`.
#if defined(__x86_64__)
// A few instructions instead of ucontext's signal-mask system call per switch (the harness
// switches millions of times): the System V callee-saved registers and the x87/SSE control
// words go on the suspended stack, its pointer into *from.
extern "C" void cuda_emu_switch_stack(void** from, void* to);
asm(R"(
  .text
  .p2align 4
  .globl cuda_emu_switch_stack
  .type cuda_emu_switch_stack, @function
cuda_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch_stack, .-cuda_emu_switch_stack
)");

struct Context {
  void* sp = nullptr;
};

void switch_context(Context& from, Context& to) { cuda_emu_switch_stack(&from.sp, to.sp); }

void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  // The frame cuda_emu_switch_stack pops, below a null return address for `entry` (which never
  // returns); `entry` starts with the stack aligned as after a call.
  const uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15};
  auto** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(entry);
  for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp, rbx, r12..r15
  uint32_t control[2] = {0, 0};
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(control[0]), "=m"(control[1]));
  std::memcpy(--sp, control, 8);  // mxcsr, then the x87 control word
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
  // makecontext has taken the stack; with the fields cleared, AddressSanitizer's swapcontext
  // does not wipe the stack's poisoning (the redzones of live frames) at every switch.
  c.uc.uc_stack = stack_t{};
}
#endif

constexpr size_t kStackBytes = size_t{256} << 10;  // per thread; AddressSanitizer frames are big
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

enum class Wait : uint8_t { Ready, Barrier, Warp, Done };

struct Fiber {
  Context ctx;
  char* stack = nullptr;  // kStackBytes above one inaccessible guard page
  uint3 tid{};
  Wait wait = Wait::Done;
  // Where it waits (Barrier, Warp), and the warp op's operands and result.
  const char* file = nullptr;
  int line = 0;
  WarpOp op{};
  unsigned mask = 0;
  int lane_mask = 0, width = 0;
  uint64_t value = 0, result = 0;
  void* fake_stack = nullptr;  // AddressSanitizer's bookkeeping while switched out
};

struct Scheduler {
  Order order = Order::Ascending;
  std::vector<std::unique_ptr<Fiber>> fibers;  // grown to the largest block; stacks reused
  bool stacks_dirty = false;  // a block was abandoned mid-run: its stacks may hold poison
  Fiber* current = nullptr;
  Context main_ctx;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  std::exception_ptr fiber_exception;
  std::vector<LaunchRecord> launches;
};
Scheduler S;

void start_switch(void** fake_stack, const void* bottom, size_t size) {
#ifdef CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}

void finish_switch(void* fake_stack, const void** bottom, size_t* size) {
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}

std::string where(const Fiber& f) {
  std::ostringstream s;
  s << "thread (" << f.tid.x << "," << f.tid.y << "," << f.tid.z << ")";
  switch (f.wait) {
    case Wait::Barrier: s << " at __syncthreads " << f.file << ":" << f.line; break;
    case Wait::Warp:
      s << " at " << (f.op == WarpOp::Ballot ? "__ballot_sync " : "__shfl_xor_sync ") << f.file
        << ":" << f.line;
      break;
    case Wait::Done: s << " (returned)"; break;
    case Wait::Ready: s << " (ready)"; break;
  }
  return s.str();
}

[[noreturn]] void fail(const std::string& what) {
  std::ostringstream s;
  s << what << " [block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << ") of ("
    << gridDim.x << "," << gridDim.y << "," << gridDim.z << "), block size (" << blockDim.x
    << "," << blockDim.y << "," << blockDim.z << "), kernel "
    << (S.launches.empty() ? "?" : S.launches.back().signature) << "]";
  S.stacks_dirty = true;
  throw Error(s.str());
}

__attribute__((no_sanitize_address)) void fiber_main() {
  finish_switch(nullptr, &S.main_bottom, &S.main_size);
  Fiber& f = *S.current;
  try {
    S.body(S.body_ctx);
  } catch (...) {
    S.fiber_exception = std::current_exception();
  }
  f.wait = Wait::Done;
  start_switch(nullptr, S.main_bottom, S.main_size);  // nullptr: this stack is finished
  switch_context(f.ctx, S.main_ctx);
  std::abort();  // a finished fiber is never resumed
}

Fiber& fiber(int i) {
  while (static_cast<int>(S.fibers.size()) <= i) {
    auto f = std::make_unique<Fiber>();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* mem = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("cuda_emu: cannot map a fiber stack");
    mprotect(mem, page, PROT_NONE);  // an overflowing thread faults instead of corrupting
    f->stack = static_cast<char*>(mem) + page;
    S.fibers.push_back(std::move(f));
  }
  return *S.fibers[i];
}

void start_fiber(Fiber& f, int linear) {
  f.tid = uint3{linear % blockDim.x, linear / blockDim.x % blockDim.y,
                linear / (blockDim.x * blockDim.y)};
  f.wait = Wait::Ready;
  f.fake_stack = nullptr;
  make_context(f.ctx, f.stack, kStackBytes, fiber_main);
}

void resume(Fiber& f) {
  S.current = &f;
  threadIdx = f.tid;
  void* fake = nullptr;
  start_switch(&fake, f.stack, kStackBytes);
  switch_context(S.main_ctx, f.ctx);
  finish_switch(fake, nullptr, nullptr);
  S.current = nullptr;
  if (S.fiber_exception) {
    std::exception_ptr e = S.fiber_exception;
    S.fiber_exception = nullptr;
    S.stacks_dirty = true;
    std::rethrow_exception(e);
  }
}

// Called on a fiber: back to the scheduler until it resumes this thread.
Fiber& wait_here(Wait kind, const char* file, int line) {
  if (S.current == nullptr) throw Error("cuda_emu: a synchronization point outside a kernel");
  Fiber& f = *S.current;
  f.wait = kind;
  f.file = file;
  f.line = line;
  start_switch(&f.fake_stack, S.main_bottom, S.main_size);
  switch_context(f.ctx, S.main_ctx);
  finish_switch(f.fake_stack, &S.main_bottom, &S.main_size);
  return f;
}

// Completes every warp op that all lanes of a warp wait at; reports a warp op that cannot
// complete (nothing else can run at this point, so it never would). True if any completed.
bool complete_warp_ops(int n) {
  bool progressed = false;
  for (int w0 = 0; w0 < n; w0 += kWarpSize) {
    const int lanes = std::min(kWarpSize, n - w0);
    Fiber* first = nullptr;
    int waiting = 0;
    for (int l = 0; l < lanes; ++l) {
      Fiber& f = *S.fibers[w0 + l];
      if (f.wait != Wait::Warp) continue;
      if (first == nullptr) first = &f;
      ++waiting;
    }
    if (first == nullptr) continue;
    for (int l = 0; l < lanes; ++l) {
      Fiber& f = *S.fibers[w0 + l];
      if (f.wait != Wait::Warp || f.op != first->op || f.line != first->line ||
          f.file != first->file || f.mask != first->mask) {
        fail("warp " + std::to_string(w0 / kWarpSize) + ": " + where(*first) + " waits for " +
             where(f) + " (a warp op reached by part of the warp: deadlock)");
      }
    }
    if (first->mask != kFullMask || first->width != kWarpSize) {
      fail("warp op with mask/width other than 0xffffffff/32 (not emulated): " + where(*first));
    }
    if (lanes < kWarpSize) {
      fail("full-mask warp op in a partial warp of " + std::to_string(lanes) + " lanes: " +
           where(*first));
    }
    uint64_t ballot = 0;
    for (int l = 0; l < kWarpSize; ++l) ballot |= uint64_t{S.fibers[w0 + l]->value != 0} << l;
    for (int l = 0; l < kWarpSize; ++l) {
      Fiber& f = *S.fibers[w0 + l];
      if (f.op == WarpOp::Ballot) {
        f.result = ballot;
      } else {
        const int src = l ^ f.lane_mask;
        f.result = src < kWarpSize ? S.fibers[w0 + src]->value : f.value;
      }
      f.wait = Wait::Ready;
    }
    progressed = true;
  }
  return progressed;
}

// With no warp op pending: releases a barrier that every thread waits at; true when all are done.
bool release_barrier(int n) {
  Fiber* first = nullptr;
  int done = 0;
  for (int i = 0; i < n; ++i) {
    Fiber& f = *S.fibers[i];
    if (f.wait == Wait::Done) {
      ++done;
      continue;
    }
    if (first == nullptr) first = &f;
    if (f.line != first->line || f.file != first->file) {
      fail("threads wait at different barriers: " + where(*first) + ", " + where(f));
    }
  }
  if (done == n) return true;
  if (done > 0) {
    fail("__syncthreads reached by " + std::to_string(n - done) + " of " + std::to_string(n) +
         " threads, the others returned: " + where(*first));
  }
  for (int i = 0; i < n; ++i) S.fibers[i]->wait = Wait::Ready;
  return false;
}

void run_block(int n) {
#ifdef CUDA_EMU_ASAN
  if (S.stacks_dirty) {  // frames of abandoned threads: forget their poisoning
    for (auto& f : S.fibers) __asan_unpoison_memory_region(f->stack, kStackBytes);
    S.stacks_dirty = false;
  }
#endif
  for (int i = 0; i < n; ++i) start_fiber(fiber(i), i);
  const bool ascending = S.order == Order::Ascending;
  while (true) {
    for (int k = 0; k < n; ++k) {
      Fiber& f = *S.fibers[ascending ? k : n - 1 - k];
      if (f.wait == Wait::Ready) resume(f);
    }
    if (complete_warp_ops(n)) continue;
    if (release_barrier(n)) return;
  }
}

std::string demangle(const char* name) {
  int status = 0;
  char* s = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 ? s : name;
  std::free(s);
  return out;
}

// Stores counted per tracked buffer.
struct Tracked {
  std::string name;
  uintptr_t begin, end;
  size_t elem;
  std::vector<uint8_t> count;  // saturates at 255
};
std::vector<Tracked> tracked;
std::vector<std::string> store_errors;
constexpr size_t kMaxStoreErrors = 8;

void store_error(const std::string& what) {
  if (store_errors.size() >= kMaxStoreErrors) return;
  std::ostringstream s;
  s << what << " (block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z
    << "), thread (" << threadIdx.x << "," << threadIdx.y << "," << threadIdx.z << "))";
  store_errors.push_back(s.str());
}

}  // namespace

void set_order(Order order) { S.order = order; }

std::vector<LaunchRecord> take_launches() {
  std::vector<LaunchRecord> out;
  out.swap(S.launches);
  return out;
}

void run_grid(const std::string& signature, dim3 grid, dim3 block, void (*body)(void*),
              void* ctx) {
  S.launches.push_back(LaunchRecord{demangle(signature.c_str()), grid, block});
  gridDim = grid;
  blockDim = block;
  blockIdx = uint3{0, 0, 0};
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
      grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535) {
    fail("invalid launch configuration (CUDA would refuse it)");
  }
  S.body = body;
  S.body_ctx = ctx;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t b = S.order == Order::Ascending ? k : blocks - 1 - k;
    blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                     static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y))};
    run_block(static_cast<int>(threads));
  }
}

void syncthreads(const char* file, int line) { wait_here(Wait::Barrier, file, line); }

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int lane_mask, int width,
                 const char* file, int line) {
  if (S.current == nullptr) throw Error("cuda_emu: a warp op outside a kernel");
  Fiber& f = *S.current;
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.lane_mask = lane_mask;
  f.width = width;
  return wait_here(Wait::Warp, file, line).result;
}

void track(const char* name, const void* p, size_t bytes, size_t elem_size) {
  const auto b = reinterpret_cast<uintptr_t>(p);
  tracked.push_back(
      Tracked{name, b, b + bytes, elem_size, std::vector<uint8_t>(bytes / elem_size)});
}

void note_store(const void* p, size_t bytes) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (Tracked& t : tracked) {
    if (a < t.begin || a + bytes > t.end) continue;
    if ((a - t.begin) % t.elem != 0 || bytes % t.elem != 0) {
      store_error("store of " + std::to_string(bytes) + " bytes into " + t.name +
                  " not on element boundaries");
      return;
    }
    for (size_t k = (a - t.begin) / t.elem, e = k + bytes / t.elem; k < e; ++k) {
      if (t.count[k] == 1) {
        store_error(t.name + "[" + std::to_string(k) + "] written a second time");
      }
      if (t.count[k] < 255) ++t.count[k];
    }
    return;
  }
  std::ostringstream s;
  s << "store of " << bytes << " bytes at " << p << " outside every output buffer";
  store_error(s.str());
}

std::vector<std::string> take_store_errors() {
  std::vector<std::string> out;
  out.swap(store_errors);
  for (const Tracked& t : tracked) {
    size_t unwritten = 0, first = 0;
    for (size_t k = t.count.size(); k-- > 0;) {
      if (t.count[k] == 0) ++unwritten, first = k;
    }
    if (unwritten > 0) {
      out.push_back(t.name + ": " + std::to_string(unwritten) + " of " +
                    std::to_string(t.count.size()) + " elements never written (the first: [" +
                    std::to_string(first) + "])");
    }
  }
  tracked.clear();
  return out;
}

}  // namespace cuda_emu
