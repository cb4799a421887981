// Launch helpers shared by row_linear.cu and tile_linear.cu (nvcc only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gemm_core.cuh"

namespace ardrop {

// Calls f(T{}) with the storage type for a dtype code (0 fp32, 1 fp16, 2 bf16).
template <class F>
inline int dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case 0:
      return f(float{});
    case 1:
      return f(__half{});
    case 2:
      return f(__nv_bfloat16{});
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}

inline int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 1;
  return n > 0 ? n : 1;
}

// Launches nothing for an empty grid (an empty batch or nothing kept), rejects grids
// CUDA cannot express, and reports the launch error of the kernel otherwise.
template <class Kernel, class... Args>
inline int launch(Kernel kernel, const Plan& plan, int threads, void* stream, Args... args) {
  if (plan.gx == 0 || plan.gy == 0) return static_cast<int>(cudaSuccess);
  if (plan.gy > 65535u) return static_cast<int>(cudaErrorInvalidConfiguration);
  kernel<<<dim3(plan.gx, plan.gy), threads, 0, static_cast<cudaStream_t>(stream)>>>(args...);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace ardrop
