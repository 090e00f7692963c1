// The emulator checked on small kernels: correct warp and block primitives, and every misuse it
// promises to report (cuda_emu.h) is reported. Run before the trelu cases, on every run.
#include "emu_self_test.h"

#include <cuda_runtime.h>

#include <cstring>
#include <functional>

namespace {

constexpr unsigned kFull = 0xffffffffu;

__global__ void warp_primitives(unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  unsigned v = lane * lane;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFull, v, offset);
  const unsigned odd = __ballot_sync(kFull, lane % 2);
  out[threadIdx.x] = v + (odd == 0xaaaaaaaau ? 1 : 0);
}

__global__ void block_sum(const int* in, int* out) {
  __shared__ int red[64];
  red[threadIdx.x] = in[threadIdx.x];
  for (int step = 32; step > 0; step /= 2) {
    __syncthreads();
    if (threadIdx.x < static_cast<unsigned>(step)) red[threadIdx.x] += red[threadIdx.x + step];
  }
  __syncthreads();
  if (threadIdx.x == 0) *out = red[0];
}

// Reads a neighbour's shared slot without a barrier between the write and the read.
__global__ void racy_neighbour(int* out) {
  __shared__ int slot[64];
  slot[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  out[threadIdx.x] = slot[(threadIdx.x + 1) % 64];
  __syncthreads();
}

__global__ void early_return_before_barrier(int n) {
  if (static_cast<int>(threadIdx.x) < n) return;
  __syncthreads();
}

__global__ void divergent_barriers() {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void shuffle_all(unsigned* out) {
  out[threadIdx.x] = __shfl_xor_sync(kFull, threadIdx.x, 1);
}

__global__ void shuffle_in_half_a_warp(unsigned* out) {
  if (threadIdx.x % 32 < 16) out[threadIdx.x] = __shfl_xor_sync(kFull, threadIdx.x, 1);
}

__global__ void shuffle_against_barrier() {
  if (threadIdx.x % 32 < 16) {
    (void)__shfl_xor_sync(kFull, threadIdx.x, 1);
  } else {
    __syncthreads();
  }
}

__global__ void tracked_stores(int* out, int twice, int skip, int* stray) {
  const int i = static_cast<int>(threadIdx.x);
  if (i != skip) {
    TAT_EMU_NOTE_STORE(out + i, sizeof(int));
    out[i] = i;
  }
  if (i == twice) TAT_EMU_NOTE_STORE(out + i, sizeof(int));
  if (stray != nullptr && i == 0) TAT_EMU_NOTE_STORE(stray, sizeof(int));
}

__global__ void nothing() {}

// Runs f; returns "" if it threw a cuda_emu::Error containing `expect`, else what went wrong.
std::string expect_error(const char* test, const std::function<void()>& f, const char* expect) {
  try {
    f();
  } catch (const cuda_emu::Error& e) {
    if (std::strstr(e.what(), expect) != nullptr) return "";
    return std::string(test) + ": reported \"" + e.what() + "\", expected \"" + expect + "\"";
  }
  return std::string(test) + ": not reported (expected \"" + expect + "\")";
}

std::string expect_store_error(const char* test, const char* expect) {
  for (const std::string& e : cuda_emu::take_store_errors()) {
    if (e.find(expect) != std::string::npos) return "";
  }
  return std::string(test) + ": not reported (expected \"" + expect + "\")";
}

}  // namespace

std::vector<std::string> run_emu_self_tests() {
  std::vector<std::string> failures;
  auto check = [&](const std::string& failure) {
    if (!failure.empty()) failures.push_back(failure);
  };

  // Warp sums and ballots have CUDA's results: sum over 32 lanes of lane^2 = 10416.
  unsigned warp_out[64] = {};
  cuda_emu::launch(warp_primitives, dim3(1), dim3(64), nullptr, &warp_out[0]);
  for (unsigned v : warp_out) {
    if (v != 10417) {
      failures.push_back("warp shuffle/ballot results are wrong");
      break;
    }
  }
  // A block tree sum gives the same result in both thread orders; a race does not.
  int in[64], sums[2] = {}, racy[2][64];
  for (int i = 0; i < 64; ++i) in[i] = 3 * i + 1;
  for (int o = 0; o < 2; ++o) {
    cuda_emu::set_order(o == 0 ? cuda_emu::Order::Ascending : cuda_emu::Order::Descending);
    cuda_emu::launch(block_sum, dim3(2), dim3(64), nullptr, in, &sums[o]);
    cuda_emu::launch(racy_neighbour, dim3(1), dim3(64), nullptr, &racy[o][0]);
  }
  cuda_emu::set_order(cuda_emu::Order::Ascending);
  if (sums[0] != 6112 || sums[1] != 6112) failures.push_back("block tree sum is wrong");
  if (std::memcmp(racy[0], racy[1], sizeof(racy[0])) == 0) {
    failures.push_back("a shared-memory race gave the same result in both thread orders");
  }

  check(expect_error("early return before a barrier",
                     [] { cuda_emu::launch(early_return_before_barrier, 1, 64, nullptr, 5); },
                     "__syncthreads reached by 59 of 64 threads"));
  check(expect_error("divergent barriers",
                     [] { cuda_emu::launch(divergent_barriers, 1, 64, nullptr); },
                     "different barriers"));
  unsigned shuffled[64];
  check(expect_error("shuffle in a partial warp",
                     [&] { cuda_emu::launch(shuffle_all, 1, 48, nullptr, &shuffled[0]); },
                     "partial warp of 16 lanes"));
  check(expect_error("shuffle by half a warp",
                     [&] {
                       cuda_emu::launch(shuffle_in_half_a_warp, 1, 64, nullptr, &shuffled[0]);
                     },
                     "reached by part of the warp"));
  check(expect_error("shuffle against a barrier",
                     [] { cuda_emu::launch(shuffle_against_barrier, 1, 64, nullptr); },
                     "reached by part of the warp"));
  check(expect_error("too many threads", [] { cuda_emu::launch(nothing, 1, 2048, nullptr); },
                     "invalid launch configuration"));

  int out[64], stray = 0;
  cuda_emu::track("out", out, sizeof(out), sizeof(int));
  cuda_emu::launch(tracked_stores, 1, 64, nullptr, &out[0], 7, -1, static_cast<int*>(nullptr));
  check(expect_store_error("double store", "out[7] written a second time"));
  cuda_emu::track("out", out, sizeof(out), sizeof(int));
  cuda_emu::launch(tracked_stores, 1, 64, nullptr, &out[0], -1, 9, static_cast<int*>(nullptr));
  check(expect_store_error("missing store", "1 of 64 elements never written (the first: [9])"));
  cuda_emu::track("out", out, sizeof(out), sizeof(int));
  cuda_emu::launch(tracked_stores, 1, 64, nullptr, &out[0], -1, -1, &stray);
  check(expect_store_error("stray store", "outside every output buffer"));
  cuda_emu::track("out", out, sizeof(out), sizeof(int));
  cuda_emu::launch(tracked_stores, 1, 64, nullptr, &out[0], -1, -1,
                   static_cast<int*>(nullptr));
  if (!cuda_emu::take_store_errors().empty()) failures.push_back("clean stores reported");
  cuda_emu::take_launches();
  return failures;
}
