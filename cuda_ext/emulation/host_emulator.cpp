// Host emulator for the ardrop CUDA kernels (fp32 only).
//
// Why: the kernels must be checked for indexing and tiling mistakes on machines
// without a GPU. This file compiles the *same* kernel bodies (gemm_core.cuh,
// row_kernels.cuh, tile_kernels.cuh) as ordinary C++ and launches them with the same
// grids (the shared Plan helpers): every block of a launch runs in turn on one OS
// thread per CUDA thread, __shared__ arrays become function statics shared by those
// threads, and __syncthreads() is a real barrier. A missing barrier, an out-of-range
// tile walk, a wrong stride or a non-uniform early return shows up here as a wrong
// result or a hang, exactly as it would on the device.
//
// It implements the plain-C launchers of launchers.h (dtype 0 only, host pointers,
// stream ignored), so binding.cpp built with -DARDROP_HOST_EMULATION links against it.
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
thread_local EmuDim3 threadIdx;
thread_local EmuDim3 blockIdx;

namespace emu {

// Reusable generation-counting barrier (C++17; std::barrier is C++20).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const unsigned long gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  unsigned long gen_ = 0;
};

Barrier* g_block_barrier = nullptr;

}  // namespace emu

inline void __syncthreads() { emu::g_block_barrier->wait(); }

#include "../kernels/gemm_core.cuh"
#include "../kernels/launchers.h"
#include "../kernels/row_kernels.cuh"
#include "../kernels/tile_kernels.cuh"

namespace {

using namespace ardrop;

int g_sm_count = 132;  // what row_use_big compares against; tests force both configs

constexpr int kOk = 0, kInvalidValue = 1, kInvalidConfiguration = 9;

// Runs every block of the grid, one block at a time, with `threads` OS threads.
template <class Kernel, class... Args>
int launch(Kernel kernel, const Plan& plan, int threads, void* /*stream*/, Args... args) {
  if (plan.gx == 0 || plan.gy == 0) return kOk;
  if (plan.gy > 65535u) return kInvalidConfiguration;
  emu::Barrier block_end(threads), sync(threads);
  emu::g_block_barrier = &sync;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int tid = 0; tid < threads; ++tid) {
    pool.emplace_back([&, tid] {
      threadIdx.x = static_cast<unsigned>(tid);
      for (unsigned by = 0; by < plan.gy; ++by)
        for (unsigned bx = 0; bx < plan.gx; ++bx) {
          blockIdx.x = bx;
          blockIdx.y = by;
          kernel(args...);
          block_end.wait();  // the block's statics are reused by the next block
        }
    });
  }
  for (auto& t : pool) t.join();
  emu::g_block_barrier = nullptr;
  return kOk;
}

WGather<float> gather(const void* w, int in_features, int out_dp, int out_offset, int in_dp,
                      int in_offset) {
  return WGather<float>{static_cast<const float*>(w), in_features, out_offset, out_dp, in_offset,
                        in_dp};
}

template <class C>
int tile_forward(const void* x, const void* w, const void* b, void* y, int batch, int out_f,
                 int in_f, int dp, int offset, int t, float scale, int relu) {
  const Plan plan = tile_walk_plan<C>(batch, out_f, t);
  return launch(tile_forward_kernel<C, float>, plan, C::NT, nullptr,
                static_cast<const float*>(x), static_cast<const float*>(w),
                static_cast<const float*>(b), static_cast<float*>(y), batch, out_f, in_f, dp,
                offset, t, plan.subs_a, scale, relu);
}

template <class C>
int tile_grad_input(const void* gy, const void* y, const void* w, void* gx, int batch,
                    int out_f, int in_f, int dp, int offset, int t, float scale, int relu) {
  const Plan plan = tile_walk_plan<C>(batch, in_f, t);
  return launch(tile_grad_input_kernel<C, float>, plan, C::NT, nullptr,
                static_cast<const float*>(gy), static_cast<const float*>(y),
                static_cast<const float*>(w), static_cast<float*>(gx), batch, out_f, in_f, dp,
                offset, t, plan.subs_a, scale, relu);
}

template <class C>
int tile_grad_weight(const void* gy, const void* y, const void* x, void* gw, int batch,
                     int out_f, int in_f, int dp, int offset, int t, float scale, int relu) {
  const Plan plan = tile_gw_plan<C>(out_f, in_f, dp, t);
  return launch(tile_grad_weight_kernel<C, float>, plan, C::NT, nullptr,
                static_cast<const float*>(gy), static_cast<const float*>(y),
                static_cast<const float*>(x), static_cast<float*>(gw), batch, out_f, in_f, dp,
                offset, t, plan.subs_a, plan.subs_b, scale, relu);
}

}  // namespace

extern "C" {

// Emulator-only knob: the SM count that decides between the big and small row configs.
void ardrop_emu_set_sm_count(int n) { g_sm_count = n > 0 ? n : 1; }

int ardrop_row_forward(int dtype, const void* x, const void* weight, const void* bias, void* y,
                       int batch, int in_features, int n_out, int n_in, int out_dp,
                       int out_offset, int in_dp, int in_offset, float in_scale,
                       float out_scale, int relu, void* stream) {
  if (dtype != 0) return kInvalidValue;
  const auto w = gather(weight, in_features, out_dp, out_offset, in_dp, in_offset);
  const auto* xp = static_cast<const float*>(x);
  const auto* bp = static_cast<const float*>(bias);
  auto* yp = static_cast<float*>(y);
  if (row_use_big(batch, n_out, g_sm_count))
    return launch(row_forward_kernel<RowBig, float>, gemm_plan<RowBig>(batch, n_out), RowBig::NT,
                  stream, xp, w, bp, yp, batch, n_out, n_in, in_scale, out_scale, relu);
  return launch(row_forward_kernel<RowSmall, float>, gemm_plan<RowSmall>(batch, n_out),
                RowSmall::NT, stream, xp, w, bp, yp, batch, n_out, n_in, in_scale, out_scale,
                relu);
}

int ardrop_row_grad_input(int dtype, const void* grad_y, const void* y, const void* weight,
                          void* grad_x, int batch, int in_features, int n_out, int n_in,
                          int out_dp, int out_offset, int in_dp, int in_offset, float in_scale,
                          float out_scale, int relu, void* stream) {
  if (dtype != 0) return kInvalidValue;
  const auto w = gather(weight, in_features, out_dp, out_offset, in_dp, in_offset);
  const auto* gyp = static_cast<const float*>(grad_y);
  const auto* yp = static_cast<const float*>(y);
  auto* gxp = static_cast<float*>(grad_x);
  if (row_use_big(batch, n_in, g_sm_count))
    return launch(row_grad_input_kernel<RowBig, float>, gemm_plan<RowBig>(batch, n_in),
                  RowBig::NT, stream, gyp, yp, w, gxp, batch, n_out, n_in, in_scale, out_scale,
                  relu);
  return launch(row_grad_input_kernel<RowSmall, float>, gemm_plan<RowSmall>(batch, n_in),
                RowSmall::NT, stream, gyp, yp, w, gxp, batch, n_out, n_in, in_scale, out_scale,
                relu);
}

int ardrop_row_grad_weight(int dtype, const void* grad_y, const void* y, const void* x,
                           void* grad_w, int batch, int in_features, int n_out, int n_in,
                           int out_dp, int out_offset, int in_dp, int in_offset, float in_scale,
                           float out_scale, int relu, void* stream) {
  if (dtype != 0) return kInvalidValue;
  const auto w = gather(grad_w, in_features, out_dp, out_offset, in_dp, in_offset);
  const auto* gyp = static_cast<const float*>(grad_y);
  const auto* yp = static_cast<const float*>(y);
  const auto* xp = static_cast<const float*>(x);
  auto* gwp = static_cast<float*>(grad_w);
  if (row_use_big(n_out, n_in, g_sm_count))
    return launch(row_grad_weight_kernel<RowBig, float>, gemm_plan<RowBig>(n_out, n_in),
                  RowBig::NT, stream, gyp, yp, xp, w, gwp, batch, n_out, n_in, in_scale,
                  out_scale, relu);
  return launch(row_grad_weight_kernel<RowSmall, float>, gemm_plan<RowSmall>(n_out, n_in),
                RowSmall::NT, stream, gyp, yp, xp, w, gwp, batch, n_out, n_in, in_scale,
                out_scale, relu);
}

int ardrop_grad_bias(int dtype, const void* grad_y, const void* y, void* grad_b, int batch,
                     int n_out, int out_dp, int out_offset, float mult, int relu, void* stream) {
  if (dtype != 0) return kInvalidValue;
  return launch(grad_bias_kernel<float>, Plan{ceil_div(n_out, 32), 1, 0, 0}, 256, stream,
                static_cast<const float*>(grad_y), static_cast<const float*>(y),
                static_cast<float*>(grad_b), batch, n_out, out_dp, out_offset, mult, relu);
}

int ardrop_tile_forward(int dtype, const void* x, const void* weight, const void* bias, void* y,
                        int batch, int out_features, int in_features, int dp, int offset,
                        int tile, float scale, int relu, void* /*stream*/) {
  if (dtype != 0) return kInvalidValue;
  if (tile_use_wide(tile))
    return tile_forward<TileWide>(x, weight, bias, y, batch, out_features, in_features, dp,
                                  offset, tile, scale, relu);
  return tile_forward<TileNarrow>(x, weight, bias, y, batch, out_features, in_features, dp,
                                  offset, tile, scale, relu);
}

int ardrop_tile_grad_input(int dtype, const void* grad_y, const void* y, const void* weight,
                           void* grad_x, int batch, int out_features, int in_features, int dp,
                           int offset, int tile, float scale, int relu, void* /*stream*/) {
  if (dtype != 0) return kInvalidValue;
  if (tile_use_wide(tile))
    return tile_grad_input<TileWide>(grad_y, y, weight, grad_x, batch, out_features,
                                     in_features, dp, offset, tile, scale, relu);
  return tile_grad_input<TileNarrow>(grad_y, y, weight, grad_x, batch, out_features, in_features,
                                     dp, offset, tile, scale, relu);
}

int ardrop_tile_grad_weight(int dtype, const void* grad_y, const void* y, const void* x,
                            void* grad_w, int batch, int out_features, int in_features, int dp,
                            int offset, int tile, float scale, int relu, void* /*stream*/) {
  if (dtype != 0) return kInvalidValue;
  if (tile_use_wide(tile))
    return tile_grad_weight<TileGwLarge>(grad_y, y, x, grad_w, batch, out_features, in_features,
                                         dp, offset, tile, scale, relu);
  return tile_grad_weight<TileGwSmall>(grad_y, y, x, grad_w, batch, out_features, in_features,
                                       dp, offset, tile, scale, relu);
}

const char* ardrop_error_string(int code) {
  switch (code) {
    case kOk:
      return "no error (host emulation)";
    case kInvalidValue:
      return "invalid argument (host emulation runs float32 only)";
    case kInvalidConfiguration:
      return "invalid configuration argument (host emulation)";
    default:
      return "unknown error (host emulation)";
  }
}

}  // extern "C"
