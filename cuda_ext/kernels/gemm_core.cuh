// Block-level tiled GEMM core shared by the row and tile kernels.
//
// Why a hand-written core instead of cuBLAS: the operands are gathered. The row
// pattern reads weight rows out_offset + k*out_dp and columns in_offset + k*in_dp; the
// tile pattern walks only the kept tiles of its diagonal pattern. The core asks two
// loader functors for exactly the elements it needs, so a dropped row, column or tile
// is never read from device memory into shared memory, and nothing is multiplied
// that was dropped. Accumulation is always fp32 (fmaf, no TF32), whatever the
// storage type.
//
// The code uses only blockIdx/threadIdx, __shared__ arrays declared by the kernels and
// __syncthreads(), so cuda_ext/emulation/host_emulator.cpp can compile the same kernel
// bodies as host C++ and run them (fp32) on a machine without a GPU.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace ardrop {

// Storage <-> fp32 conversion. Explicit intrinsics, because torch builds extensions
// with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__.
template <typename T>
struct Cvt;

template <>
struct Cvt<float> {
  __device__ __forceinline__ static float to(float v) { return v; }
  __device__ __forceinline__ static float from(float v) { return v; }
};

#ifdef __CUDACC__
template <>
struct Cvt<__half> {
  __device__ __forceinline__ static float to(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from(float v) { return __float2half_rn(v); }
};

template <>
struct Cvt<__nv_bfloat16> {
  __device__ __forceinline__ static float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 from(float v) {
    return __float2bfloat16_rn(v);
  }
};
#endif

// Block tile BM x BN, K step BK, each thread owns TM x TN outputs laid out with a
// stride of (BM/TM, BN/TN) so that shared-memory reads are conflict-free and the
// epilogue's global writes are coalesced.
template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct Cfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int TY = BM / TM;  // thread rows
  static constexpr int TX = BN / TN;  // thread columns
  static constexpr int NT = TX * TY;  // threads per block
  static constexpr int LDA = BM + 1;  // +1 pad: fewer bank conflicts on stores
  static constexpr int LDB = BN + 1;
  static_assert(BM % TM == 0 && BN % TN == 0, "micro-tile must divide the block tile");
  static_assert((BM * BK) % NT == 0 && (BN * BK) % NT == 0,
                "each thread must load a whole number of elements");
};

// Dense row-major operand: op(a, b) = p[a*ld + b] (or p[b*ld + a] when TRANS).
template <typename T, bool TRANS>
struct Dense {
  const T* p;
  long long ld;
  __device__ __forceinline__ float operator()(int a, int b) const {
    const long long r = TRANS ? b : a, c = TRANS ? a : b;
    return Cvt<T>::to(p[r * ld + c]);
  }
};

// Upstream gradient of the pre-activation, computed while loading:
// gz = mult * grad_y * (relu ? y > 0 : 1). Layout [batch, ld]; TRANS swaps (a, b).
template <typename T, bool TRANS>
struct GradZ {
  const T* gy;
  const T* y;
  long long ld;
  float mult;
  int relu;
  __device__ __forceinline__ float operator()(int a, int b) const {
    const long long r = TRANS ? b : a, c = TRANS ? a : b;
    const long long idx = r * ld + c;
    float g = Cvt<T>::to(gy[idx]);
    if (relu && !(Cvt<T>::to(y[idx]) > 0.f)) g = 0.f;
    return g * mult;
  }
};

// Weight element (r, c) of the kept sub-matrix: W[r_off + r*r_step, c_off + c*c_step].
// Dropped rows/columns are skipped by the index arithmetic itself.
template <typename T>
struct WGather {
  const T* w;
  long long ld;  // in_features
  int r_off, r_step, c_off, c_step;
  __device__ __forceinline__ float at(int r, int c) const {
    return Cvt<T>::to(w[(long long)(r_off + r * r_step) * ld + c_off + (long long)c * c_step]);
  }
};

// Weight as the B operand: B(k, n) = W'(n, k) when TRANS (forward: y = x W'^T),
// W'(k, n) otherwise (grad-input: dx = gz W').
template <typename T, bool TRANS>
struct WeightB {
  WGather<T> g;
  __device__ __forceinline__ float operator()(int k, int n) const {
    return TRANS ? g.at(n, k) : g.at(k, n);
  }
};

// acc += A[m0 : m0+BM, k_begin : k_end] * B[k_begin : k_end, n0 : n0+BN], restricted to
// m < m_lim, n < n_lim (out-of-range elements are zero and never loaded).
// A_KC / B_KC say whether k is the contiguous index of A / B in memory; the load order
// then puts consecutive threads on consecutive addresses.
// Must be called by all threads of the block (it synchronises).
template <class C, bool A_KC, bool B_KC, class LA, class LB>
__device__ __forceinline__ void mma_range(float (&acc)[C::TM][C::TN], float* As, float* Bs,
                                          const LA& la, const LB& lb, int m0, int m_lim,
                                          int n0, int n_lim, int k_begin, int k_end) {
  const int tid = threadIdx.x;
  const int tx = tid % C::TX, ty = tid / C::TX;
  for (int k0 = k_begin; k0 < k_end; k0 += C::BK) {
#pragma unroll
    for (int p = 0; p < (C::BM * C::BK) / C::NT; ++p) {
      const int idx = tid + p * C::NT;
      const int kk = A_KC ? idx % C::BK : idx / C::BM;
      const int mm = A_KC ? idx / C::BK : idx % C::BM;
      const int m = m0 + mm, k = k0 + kk;
      As[kk * C::LDA + mm] = (m < m_lim && k < k_end) ? la(m, k) : 0.f;
    }
#pragma unroll
    for (int p = 0; p < (C::BN * C::BK) / C::NT; ++p) {
      const int idx = tid + p * C::NT;
      const int kk = B_KC ? idx % C::BK : idx / C::BN;
      const int nn = B_KC ? idx / C::BK : idx % C::BN;
      const int n = n0 + nn, k = k0 + kk;
      Bs[kk * C::LDB + nn] = (n < n_lim && k < k_end) ? lb(k, n) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < C::BK; ++kk) {
      float a[C::TM], b[C::TN];
#pragma unroll
      for (int i = 0; i < C::TM; ++i) a[i] = As[kk * C::LDA + ty + i * C::TY];
#pragma unroll
      for (int j = 0; j < C::TN; ++j) b[j] = Bs[kk * C::LDB + tx + j * C::TX];
#pragma unroll
      for (int i = 0; i < C::TM; ++i)
#pragma unroll
        for (int j = 0; j < C::TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
}

template <class C>
__device__ __forceinline__ void zero_acc(float (&acc)[C::TM][C::TN]) {
#pragma unroll
  for (int i = 0; i < C::TM; ++i)
#pragma unroll
    for (int j = 0; j < C::TN; ++j) acc[i][j] = 0.f;
}

// Calls epi(m, n, value) for each in-range output element this thread owns.
template <class C, class Epi>
__device__ __forceinline__ void store_acc(const float (&acc)[C::TM][C::TN], int m0, int m_lim,
                                          int n0, int n_lim, const Epi& epi) {
  const int tid = threadIdx.x;
  const int tx = tid % C::TX, ty = tid / C::TX;
#pragma unroll
  for (int i = 0; i < C::TM; ++i) {
    const int m = m0 + ty + i * C::TY;
    if (m >= m_lim) continue;
#pragma unroll
    for (int j = 0; j < C::TN; ++j) {
      const int n = n0 + tx + j * C::TX;
      if (n < n_lim) epi(m, n, acc[i][j]);
    }
  }
}

// Grid of a launch plus the sub-block counts the kernel needs to decode blockIdx.
// Plain host code, shared by the .cu launchers and the host emulator, so both launch
// exactly the same grids.
struct Plan {
  unsigned gx, gy;
  int subs_a, subs_b;
};

__host__ __device__ __forceinline__ unsigned ceil_div(long long a, long long b) {
  return static_cast<unsigned>((a + b - 1) / b);
}

// Plain GEMM grid: BM-row blocks on x, BN-column blocks on y.
template <class C>
inline Plan gemm_plan(int m, int n) {
  return Plan{ceil_div(m, C::BM), ceil_div(n, C::BN), 0, 0};
}

// Number of indices start, start+step, ... below n (0 when start >= n).
__host__ __device__ __forceinline__ int strided_count(int n, int start, int step) {
  return n > start ? (n - start + step - 1) / step : 0;
}

// First tile index j (resp. i) kept in tile row i (resp. column j): (i + j) % dp == offset.
__host__ __device__ __forceinline__ int first_kept(int other, int dp, int offset) {
  return ((offset - other % dp) % dp + dp) % dp;
}

// Column sums of gz over the batch, written to out[out_offset + n*out_dp]: the bias
// gradient of both patterns. Block: 32 columns x 8 batch lanes.
template <typename T>
__global__ void __launch_bounds__(256)
    grad_bias_kernel(const T* gy, const T* y, T* out, int batch, int n_out, int out_dp,
                     int out_offset, float mult, int relu) {
  __shared__ float red[8][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int n = blockIdx.x * 32 + tx;
  float s = 0.f;
  if (n < n_out) {
    const GradZ<T, false> gz{gy, y, n_out, mult, relu};
    for (int b = ty; b < batch; b += 8) s += gz(b, n);
  }
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && n < n_out) {
    float t = 0.f;
    for (int r = 0; r < 8; ++r) t += red[r][tx];
    out[out_offset + (long long)n * out_dp] = Cvt<T>::from(t);
  }
}

}  // namespace ardrop
