// Tile-pattern launchers (see launchers.h for the contract). No torch headers here.
#include "dispatch.cuh"
#include "launchers.h"
#include "tile_kernels.cuh"

namespace {

using namespace ardrop;

template <class C, typename T>
int forward(const void* x, const void* weight, const void* bias, void* y, int batch,
            int out_f, int in_f, int dp, int offset, int t, float scale, int relu,
            void* stream) {
  const Plan plan = tile_walk_plan<C>(batch, out_f, t);
  return launch(tile_forward_kernel<C, T>, plan, C::NT, stream, static_cast<const T*>(x),
                static_cast<const T*>(weight), static_cast<const T*>(bias), static_cast<T*>(y),
                batch, out_f, in_f, dp, offset, t, plan.subs_a, scale, relu);
}

template <class C, typename T>
int grad_input(const void* grad_y, const void* y, const void* weight, void* grad_x, int batch,
               int out_f, int in_f, int dp, int offset, int t, float scale, int relu,
               void* stream) {
  const Plan plan = tile_walk_plan<C>(batch, in_f, t);
  return launch(tile_grad_input_kernel<C, T>, plan, C::NT, stream,
                static_cast<const T*>(grad_y), static_cast<const T*>(y),
                static_cast<const T*>(weight), static_cast<T*>(grad_x), batch, out_f, in_f, dp,
                offset, t, plan.subs_a, scale, relu);
}

template <class C, typename T>
int grad_weight(const void* grad_y, const void* y, const void* x, void* grad_w, int batch,
                int out_f, int in_f, int dp, int offset, int t, float scale, int relu,
                void* stream) {
  const Plan plan = tile_gw_plan<C>(out_f, in_f, dp, t);
  return launch(tile_grad_weight_kernel<C, T>, plan, C::NT, stream,
                static_cast<const T*>(grad_y), static_cast<const T*>(y),
                static_cast<const T*>(x), static_cast<T*>(grad_w), batch, out_f, in_f, dp,
                offset, t, plan.subs_a, plan.subs_b, scale, relu);
}

}  // namespace

extern "C" int ardrop_tile_forward(int dtype, const void* x, const void* weight,
                                   const void* bias, void* y, int batch, int out_features,
                                   int in_features, int dp, int offset, int tile, float scale,
                                   int relu, void* stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (tile_use_wide(tile))
      return forward<TileWide, T>(x, weight, bias, y, batch, out_features, in_features, dp,
                                  offset, tile, scale, relu, stream);
    return forward<TileNarrow, T>(x, weight, bias, y, batch, out_features, in_features, dp,
                                  offset, tile, scale, relu, stream);
  });
}

extern "C" int ardrop_tile_grad_input(int dtype, const void* grad_y, const void* y,
                                      const void* weight, void* grad_x, int batch,
                                      int out_features, int in_features, int dp, int offset,
                                      int tile, float scale, int relu, void* stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (tile_use_wide(tile))
      return grad_input<TileWide, T>(grad_y, y, weight, grad_x, batch, out_features,
                                     in_features, dp, offset, tile, scale, relu, stream);
    return grad_input<TileNarrow, T>(grad_y, y, weight, grad_x, batch, out_features,
                                     in_features, dp, offset, tile, scale, relu, stream);
  });
}

extern "C" int ardrop_tile_grad_weight(int dtype, const void* grad_y, const void* y,
                                       const void* x, void* grad_w, int batch,
                                       int out_features, int in_features, int dp, int offset,
                                       int tile, float scale, int relu, void* stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (tile_use_wide(tile))
      return grad_weight<TileGwLarge, T>(grad_y, y, x, grad_w, batch, out_features,
                                         in_features, dp, offset, tile, scale, relu, stream);
    return grad_weight<TileGwSmall, T>(grad_y, y, x, grad_w, batch, out_features, in_features,
                                       dp, offset, tile, scale, relu, stream);
  });
}
