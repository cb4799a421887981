// Row-pattern kernels (compact_linear). Every operand is either compact (x, y, grad_y,
// grad_x) or gathered from the full weight through stride arithmetic
// (row out_offset + k*out_dp, column in_offset + k*in_dp), so dropped weight rows and
// columns are never loaded and never multiplied. Grid: blockIdx.x walks BM-row blocks
// of the output, blockIdx.y walks BN-column blocks.
#pragma once

#include "gemm_core.cuh"

namespace ardrop {

// 128x128 tiles (8x8 per thread) once there are enough blocks to fill the GPU, else
// 64x64 tiles (4x4 per thread) so small layers and small batches still spread out.
using RowBig = Cfg<128, 128, 8, 8, 8>;
using RowSmall = Cfg<64, 64, 16, 4, 4>;

inline bool row_use_big(int m, int n, int sm_count) {
  return static_cast<long long>(ceil_div(m, RowBig::BM)) * ceil_div(n, RowBig::BN) >= sm_count;
}

// y[b, k] = act(in_scale * sum_m x[b, m] * W[O_k, I_m] + bias[O_k]) * out_scale
template <class C, typename T>
__global__ void __launch_bounds__(C::NT)
    row_forward_kernel(const T* x, WGather<T> w, const T* bias, T* y, int batch, int n_out,
                       int n_in, float in_scale, float out_scale, int relu) {
  __shared__ float As[C::BK * C::LDA];
  __shared__ float Bs[C::BK * C::LDB];
  const int m0 = blockIdx.x * C::BM, n0 = blockIdx.y * C::BN;
  float acc[C::TM][C::TN];
  zero_acc<C>(acc);
  mma_range<C, true, true>(acc, As, Bs, Dense<T, false>{x, n_in}, WeightB<T, true>{w}, m0,
                           batch, n0, n_out, 0, n_in);
  store_acc<C>(acc, m0, batch, n0, n_out, [&](int m, int n, float v) {
    float z = in_scale * v;
    if (bias != nullptr) z += Cvt<T>::to(bias[w.r_off + (long long)n * w.r_step]);
    if (relu && z < 0.f) z = 0.f;
    y[(long long)m * n_out + n] = Cvt<T>::from(z * out_scale);
  });
}

// grad_x[b, m] = in_scale * sum_k gz[b, k] * W[O_k, I_m]
template <class C, typename T>
__global__ void __launch_bounds__(C::NT)
    row_grad_input_kernel(const T* gy, const T* y, WGather<T> w, T* gx, int batch, int n_out,
                          int n_in, float in_scale, float out_scale, int relu) {
  __shared__ float As[C::BK * C::LDA];
  __shared__ float Bs[C::BK * C::LDB];
  const int m0 = blockIdx.x * C::BM, n0 = blockIdx.y * C::BN;
  float acc[C::TM][C::TN];
  zero_acc<C>(acc);
  mma_range<C, true, false>(acc, As, Bs, GradZ<T, false>{gy, y, n_out, out_scale, relu},
                            WeightB<T, false>{w}, m0, batch, n0, n_in, 0, n_out);
  store_acc<C>(acc, m0, batch, n0, n_in, [&](int m, int n, float v) {
    gx[(long long)m * n_in + n] = Cvt<T>::from(in_scale * v);
  });
}

// grad_w[O_k, I_m] = in_scale * sum_b gz[b, k] * x[b, m]; only the kept block is written.
template <class C, typename T>
__global__ void __launch_bounds__(C::NT)
    row_grad_weight_kernel(const T* gy, const T* y, const T* x, WGather<T> w, T* gw,
                           int batch, int n_out, int n_in, float in_scale, float out_scale,
                           int relu) {
  __shared__ float As[C::BK * C::LDA];
  __shared__ float Bs[C::BK * C::LDB];
  const int m0 = blockIdx.x * C::BM, n0 = blockIdx.y * C::BN;
  float acc[C::TM][C::TN];
  zero_acc<C>(acc);
  mma_range<C, false, false>(acc, As, Bs, GradZ<T, true>{gy, y, n_out, out_scale, relu},
                             Dense<T, false>{x, n_in}, m0, n_out, n0, n_in, 0, batch);
  store_acc<C>(acc, m0, n_out, n0, n_in, [&](int m, int n, float v) {
    gw[(long long)(w.r_off + m * w.r_step) * w.ld + w.c_off + (long long)n * w.c_step] =
        Cvt<T>::from(in_scale * v);
  });
}

}  // namespace ardrop
