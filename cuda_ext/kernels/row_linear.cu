// Row-pattern launchers (see launchers.h for the contract). No torch headers here:
// the binding passes raw device pointers, sizes and the current stream.
#include "dispatch.cuh"
#include "launchers.h"
#include "row_kernels.cuh"

namespace {

using namespace ardrop;

template <typename T>
WGather<T> gather(const void* w, int in_features, int out_dp, int out_offset, int in_dp,
                  int in_offset) {
  return WGather<T>{static_cast<const T*>(w), in_features, out_offset, out_dp, in_offset, in_dp};
}

}  // namespace

extern "C" int ardrop_row_forward(int dtype, const void* x, const void* weight,
                                  const void* bias, void* y, int batch, int in_features,
                                  int n_out, int n_in, int out_dp, int out_offset, int in_dp,
                                  int in_offset, float in_scale, float out_scale, int relu,
                                  void* stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto w = gather<T>(weight, in_features, out_dp, out_offset, in_dp, in_offset);
    const T* xp = static_cast<const T*>(x);
    const T* bp = static_cast<const T*>(bias);
    T* yp = static_cast<T*>(y);
    if (row_use_big(batch, n_out, sm_count()))
      return launch(row_forward_kernel<RowBig, T>, gemm_plan<RowBig>(batch, n_out), RowBig::NT,
                    stream, xp, w, bp, yp, batch, n_out, n_in, in_scale, out_scale, relu);
    return launch(row_forward_kernel<RowSmall, T>, gemm_plan<RowSmall>(batch, n_out),
                  RowSmall::NT, stream, xp, w, bp, yp, batch, n_out, n_in, in_scale, out_scale,
                  relu);
  });
}

extern "C" int ardrop_row_grad_input(int dtype, const void* grad_y, const void* y,
                                     const void* weight, void* grad_x, int batch,
                                     int in_features, int n_out, int n_in, int out_dp,
                                     int out_offset, int in_dp, int in_offset, float in_scale,
                                     float out_scale, int relu, void* stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto w = gather<T>(weight, in_features, out_dp, out_offset, in_dp, in_offset);
    const T* gyp = static_cast<const T*>(grad_y);
    const T* yp = static_cast<const T*>(y);
    T* gxp = static_cast<T*>(grad_x);
    if (row_use_big(batch, n_in, sm_count()))
      return launch(row_grad_input_kernel<RowBig, T>, gemm_plan<RowBig>(batch, n_in),
                    RowBig::NT, stream, gyp, yp, w, gxp, batch, n_out, n_in, in_scale,
                    out_scale, relu);
    return launch(row_grad_input_kernel<RowSmall, T>, gemm_plan<RowSmall>(batch, n_in),
                  RowSmall::NT, stream, gyp, yp, w, gxp, batch, n_out, n_in, in_scale,
                  out_scale, relu);
  });
}

extern "C" int ardrop_row_grad_weight(int dtype, const void* grad_y, const void* y,
                                      const void* x, void* grad_w, int batch, int in_features,
                                      int n_out, int n_in, int out_dp, int out_offset,
                                      int in_dp, int in_offset, float in_scale,
                                      float out_scale, int relu, void* stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto w = gather<T>(grad_w, in_features, out_dp, out_offset, in_dp, in_offset);
    const T* gyp = static_cast<const T*>(grad_y);
    const T* yp = static_cast<const T*>(y);
    const T* xp = static_cast<const T*>(x);
    T* gwp = static_cast<T*>(grad_w);
    if (row_use_big(n_out, n_in, sm_count()))
      return launch(row_grad_weight_kernel<RowBig, T>, gemm_plan<RowBig>(n_out, n_in),
                    RowBig::NT, stream, gyp, yp, xp, w, gwp, batch, n_out, n_in, in_scale,
                    out_scale, relu);
    return launch(row_grad_weight_kernel<RowSmall, T>, gemm_plan<RowSmall>(n_out, n_in),
                  RowSmall::NT, stream, gyp, yp, xp, w, gwp, batch, n_out, n_in, in_scale,
                  out_scale, relu);
  });
}

extern "C" int ardrop_grad_bias(int dtype, const void* grad_y, const void* y, void* grad_b,
                                int batch, int n_out, int out_dp, int out_offset, float mult,
                                int relu, void* stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch(grad_bias_kernel<T>, Plan{ceil_div(n_out, 32), 1, 0, 0}, 256, stream,
                  static_cast<const T*>(grad_y), static_cast<const T*>(y),
                  static_cast<T*>(grad_b), batch, n_out, out_dp, out_offset, mult, relu);
  });
}

extern "C" const char* ardrop_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
