// Tile-pattern kernels (tile_linear). W [out_features, in_features] is cut into
// t x t tiles (ragged at the right/bottom edge); tile (i, j) is kept iff
// (i + j) % dp == offset. A thread block never straddles a tile boundary in its tile-
// bound dimension, so all its columns share one kept set, and it loops only over the
// kept tiles: dropped tiles are never loaded or multiplied.
#pragma once

#include "gemm_core.cuh"

namespace ardrop {

// The tile-bound dimension of a block is at most BN (or BM for grad-weight rows), so
// for t = 32 (the default) a 32-wide block matches one tile exactly; t >= 64 gets
// 64-wide blocks. The batch dimension uses 64-row blocks.
using TileNarrow = Cfg<64, 32, 16, 4, 2>;  // forward / grad-input, t < 64
using TileWide = Cfg<64, 64, 16, 4, 4>;    // forward / grad-input, t >= 64
using TileGwSmall = Cfg<32, 32, 16, 2, 2>;  // grad-weight, t < 64
using TileGwLarge = Cfg<64, 64, 16, 4, 4>;  // grad-weight, t >= 64

inline bool tile_use_wide(int t) { return t >= 64; }

// Forward and grad-input: batch blocks on x; on y, for each tile along the tile-bound
// dimension (`features` = out_features for forward, in_features for grad-input),
// subs_a = ceil(t / BN) sub-blocks.
// A tile wider than the matrix is one ragged tile: no sub-blocks past the edge.
template <class C>
inline Plan tile_walk_plan(int batch, int features, int t) {
  const int subs = static_cast<int>(ceil_div(min(t, features), C::BN));
  return Plan{ceil_div(batch, C::BM), ceil_div(features, t) * static_cast<unsigned>(subs), subs,
              0};
}

// Grad-weight: x = tile rows * subs_a (= ceil(t / BM)) row sub-blocks; y = at most
// ceil(gj / dp) kept tiles per tile row * subs_b (= ceil(t / BN)) column sub-blocks.
// Blocks past a row's last kept tile return at once without touching memory.
template <class C>
inline Plan tile_gw_plan(int out_f, int in_f, int dp, int t) {
  const int subs_m = static_cast<int>(ceil_div(min(t, out_f), C::BM));
  const int subs_n = static_cast<int>(ceil_div(min(t, in_f), C::BN));
  return Plan{ceil_div(out_f, t) * static_cast<unsigned>(subs_m),
              ceil_div(ceil_div(in_f, t), dp) * static_cast<unsigned>(subs_n), subs_m, subs_n};
}

// Block (bx, by): batch rows [bx*BM, +BM); output columns = sub-block s of tile row i,
// where by = i * subs + s and subs = ceil(t / BN).
// y[b, o] = act(scale * sum_{kept j} sum_{c in tile j} x[b, c] * W[o, c] + bias[o])
template <class C, typename T>
__global__ void __launch_bounds__(C::NT)
    tile_forward_kernel(const T* x, const T* wp, const T* bias, T* y, int batch, int out_f,
                        int in_f, int dp, int offset, int t, int subs, float scale,
                        int relu) {
  __shared__ float As[C::BK * C::LDA];
  __shared__ float Bs[C::BK * C::LDB];
  const int i = blockIdx.y / subs, s = blockIdx.y % subs;
  const int n0 = i * t + s * C::BN;
  const int n_lim = min(i * t + t, out_f);
  if (n0 >= n_lim) return;  // sub-block past a ragged edge tile: uniform for the block
  const int m0 = blockIdx.x * C::BM;
  const int gj = (in_f + t - 1) / t;
  const WeightB<T, true> wb{WGather<T>{wp, in_f, 0, 1, 0, 1}};
  float acc[C::TM][C::TN];
  zero_acc<C>(acc);
  for (int j = first_kept(i, dp, offset); j < gj; j += dp)
    mma_range<C, true, true>(acc, As, Bs, Dense<T, false>{x, in_f}, wb, m0, batch, n0, n_lim,
                             j * t, min(j * t + t, in_f));
  store_acc<C>(acc, m0, batch, n0, n_lim, [&](int m, int n, float v) {
    float z = scale * v;
    if (bias != nullptr) z += Cvt<T>::to(bias[n]);
    if (relu && z < 0.f) z = 0.f;
    y[(long long)m * out_f + n] = Cvt<T>::from(z);
  });
}

// Block (bx, by): batch rows [bx*BM, +BM); input columns = sub-block s of tile column
// j, by = j * subs + s. grad_x[b, c] = scale * sum_{kept i} sum_{o in tile i} gz[b, o] W[o, c]
template <class C, typename T>
__global__ void __launch_bounds__(C::NT)
    tile_grad_input_kernel(const T* gy, const T* y, const T* wp, T* gx, int batch, int out_f,
                           int in_f, int dp, int offset, int t, int subs, float scale,
                           int relu) {
  __shared__ float As[C::BK * C::LDA];
  __shared__ float Bs[C::BK * C::LDB];
  const int j = blockIdx.y / subs, s = blockIdx.y % subs;
  const int n0 = j * t + s * C::BN;
  const int n_lim = min(j * t + t, in_f);
  if (n0 >= n_lim) return;
  const int m0 = blockIdx.x * C::BM;
  const int gi = (out_f + t - 1) / t;
  const WeightB<T, false> wb{WGather<T>{wp, in_f, 0, 1, 0, 1}};
  float acc[C::TM][C::TN];
  zero_acc<C>(acc);
  for (int i = first_kept(j, dp, offset); i < gi; i += dp)
    mma_range<C, true, false>(acc, As, Bs, GradZ<T, false>{gy, y, out_f, 1.f, relu}, wb, m0,
                              batch, n0, n_lim, i * t, min(i * t + t, out_f));
  store_acc<C>(acc, m0, batch, n0, n_lim, [&](int m, int n, float v) {
    gx[(long long)m * in_f + n] = Cvt<T>::from(scale * v);
  });
}

// Block (bx, by): bx = i * subs_m + sm (rows of tile row i), by = jj * subs_n + sn with
// j = first_kept(i) + jj * dp (columns of the jj-th kept tile of that row). Only kept
// tiles get a block with work. grad_w[o, c] = scale * sum_b gz[b, o] * x[b, c].
template <class C, typename T>
__global__ void __launch_bounds__(C::NT)
    tile_grad_weight_kernel(const T* gy, const T* y, const T* x, T* gw, int batch, int out_f,
                            int in_f, int dp, int offset, int t, int subs_m, int subs_n,
                            float scale, int relu) {
  __shared__ float As[C::BK * C::LDA];
  __shared__ float Bs[C::BK * C::LDB];
  const int i = blockIdx.x / subs_m, sm = blockIdx.x % subs_m;
  const int jj = blockIdx.y / subs_n, sn = blockIdx.y % subs_n;
  const int gj = (in_f + t - 1) / t;
  const int j = first_kept(i, dp, offset) + jj * dp;
  if (j >= gj) return;  // this tile row has fewer kept tiles than the grid allows for
  const int m0 = i * t + sm * C::BM, m_lim = min(i * t + t, out_f);
  const int n0 = j * t + sn * C::BN, n_lim = min(j * t + t, in_f);
  if (m0 >= m_lim || n0 >= n_lim) return;
  float acc[C::TM][C::TN];
  zero_acc<C>(acc);
  mma_range<C, false, false>(acc, As, Bs, GradZ<T, true>{gy, y, out_f, 1.f, relu},
                             Dense<T, false>{x, in_f}, m0, m_lim, n0, n_lim, 0, batch);
  store_acc<C>(acc, m0, m_lim, n0, n_lim, [&](int m, int n, float v) {
    gw[(long long)m * in_f + n] = Cvt<T>::from(scale * v);
  });
}

}  // namespace ardrop
