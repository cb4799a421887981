/* Plain-C interface between the CUDA kernels (row_linear.cu, tile_linear.cu) and the
 * torch binding (binding.cpp).
 *
 * Why a C header: the CPU build of torch ships incomplete CUDA headers, so the kernels
 * must not include any torch header and the binding must not include any CUDA header.
 * Both sides include this file, so a signature drift is a compile error on the .cu side
 * (conflicting extern "C" declarations) rather than a crash at run time.
 *
 * Every launcher returns the cudaError_t of its launch as an int (0 = success).
 * Pointers are raw device pointers to contiguous row-major tensors; `dtype` is
 * 0 = float32, 1 = float16, 2 = bfloat16 (fp32 accumulation in every case);
 * `stream` is a cudaStream_t (torch.cuda.current_stream().cuda_stream).
 */
#ifndef ARDROP_CUDA_EXT_LAUNCHERS_H
#define ARDROP_CUDA_EXT_LAUNCHERS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Row pattern (compact_linear). O = out_offset + k*out_dp (k < n_out),
 * I = in_offset + k*in_dp (k < n_in); weight is the full [out_features, in_features]
 * parameter, x / y / grad_y are compact ([batch, n_in] / [batch, n_out]).
 * y = act(in_scale * x @ W[O][:, I]^T + bias[O]) * out_scale. */
int ardrop_row_forward(int dtype, const void* x, const void* weight, const void* bias,
                       void* y, int batch, int in_features, int n_out, int n_in,
                       int out_dp, int out_offset, int in_dp, int in_offset,
                       float in_scale, float out_scale, int relu, void* stream);

/* grad_x = in_scale * gz @ W[O][:, I], gz = out_scale * grad_y * (relu ? y > 0 : 1). */
int ardrop_row_grad_input(int dtype, const void* grad_y, const void* y,
                          const void* weight, void* grad_x, int batch, int in_features,
                          int n_out, int n_in, int out_dp, int out_offset, int in_dp,
                          int in_offset, float in_scale, float out_scale, int relu,
                          void* stream);

/* grad_w[O x I] = in_scale * gz^T @ x. Writes only the kept O x I block of the
 * full-size grad_w; the caller zero-fills the rest beforehand. */
int ardrop_row_grad_weight(int dtype, const void* grad_y, const void* y, const void* x,
                           void* grad_w, int batch, int in_features, int n_out, int n_in,
                           int out_dp, int out_offset, int in_dp, int in_offset,
                           float in_scale, float out_scale, int relu, void* stream);

/* grad_b[out_offset + k*out_dp] = sum_b mult * grad_y[b, k] * (relu ? y[b, k] > 0 : 1)
 * for k < n_out. Writes only those entries (the caller zero-fills the rest).
 * Shared by both patterns (tile: n_out = out_features, out_dp = 1, mult = 1). */
int ardrop_grad_bias(int dtype, const void* grad_y, const void* y, void* grad_b,
                     int batch, int n_out, int out_dp, int out_offset, float mult,
                     int relu, void* stream);

/* Tile pattern (tile_linear). Tile (i, j) of the `tile` x `tile` grid over W
 * [out_features, in_features] (ragged edge tiles allowed) is kept iff
 * (i + j) % dp == offset. y = act(x @ (scale * W * M)^T + bias), x dense. */
int ardrop_tile_forward(int dtype, const void* x, const void* weight, const void* bias,
                        void* y, int batch, int out_features, int in_features, int dp,
                        int offset, int tile, float scale, int relu, void* stream);

/* grad_x = scale * gz @ (W * M), gz = grad_y * (relu ? y > 0 : 1). */
int ardrop_tile_grad_input(int dtype, const void* grad_y, const void* y,
                           const void* weight, void* grad_x, int batch, int out_features,
                           int in_features, int dp, int offset, int tile, float scale,
                           int relu, void* stream);

/* grad_w = scale * (gz^T @ x) on kept tiles only; dropped tiles are not written
 * (the caller zero-fills grad_w beforehand). */
int ardrop_tile_grad_weight(int dtype, const void* grad_y, const void* y, const void* x,
                            void* grad_w, int batch, int out_features, int in_features,
                            int dp, int offset, int tile, float scale, int relu,
                            void* stream);

/* cudaGetErrorString for a code returned above (the binding has no CUDA headers). */
const char* ardrop_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* ARDROP_CUDA_EXT_LAUNCHERS_H */
