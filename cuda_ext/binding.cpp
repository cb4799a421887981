// Torch binding for the ardrop CUDA kernels.
//
// Only torch/extension.h is included: the kernels live in torch-free .cu files behind
// the plain-C launchers of kernels/launchers.h, and the current CUDA stream arrives from
// Python as an integer (torch.cuda.current_stream().cuda_stream). That keeps this file
// compilable against the CPU build of torch, whose CUDA headers are incomplete.
//
// The caller (cuda_ext/functions.py) makes the tensors' device current before calling.
// Full-size weight and bias gradients are allocated with at::zeros (a memset on the
// current stream); the kernels then write only the kept part.
//
// With ARDROP_HOST_EMULATION defined the same binding is linked against the host
// emulator (cuda_ext/emulation/host_emulator.cpp) and accepts CPU float32 tensors, so
// the binding, kernels and autograd wrappers can be tested end to end without a GPU.
#include <torch/extension.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "kernels/launchers.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return 0;
    case at::kHalf:
      return 1;
    case at::kBFloat16:
      return 2;
    default:
      TORCH_CHECK(false, "ardrop cuda_ext supports float32, float16 and bfloat16 tensors, got ",
                  t.scalar_type());
  }
  return -1;
}

void* stream_ptr(int64_t stream) { return reinterpret_cast<void*>(static_cast<intptr_t>(stream)); }

int as_int(int64_t v, const char* name) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "ardrop cuda_ext: ", name, " = ", v,
              " is outside [0, 2^31)");
  return static_cast<int>(v);
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "ardrop cuda_ext: ", what, " kernel failed to launch: ",
              ardrop_error_string(code), " (cudaError ", code, ")");
}

// Every operand must share x's device and dtype; the result is made contiguous.
at::Tensor operand(const at::Tensor& t, const at::Tensor& like, const char* name) {
#ifdef ARDROP_HOST_EMULATION
  TORCH_CHECK(t.device().is_cpu(), "ardrop cuda_ext (emulation): ", name, " must be on the CPU");
#else
  TORCH_CHECK(t.is_cuda(), "ardrop cuda_ext: ", name, " must be a CUDA tensor, got ", t.device());
#endif
  TORCH_CHECK(t.device() == like.device(), "ardrop cuda_ext: ", name, " is on ", t.device(),
              " but x is on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "ardrop cuda_ext: ", name, " has dtype ",
              t.scalar_type(), " but x has ", like.scalar_type());
  return t.contiguous();
}

// The forward output that a ReLU backward masks with; undefined when there is no ReLU.
at::Tensor relu_output(const std::optional<at::Tensor>& y_, const at::Tensor& gy,
                       const at::Tensor& like, bool relu) {
  if (!relu) return at::Tensor();
  TORCH_CHECK(y_.has_value() && y_->defined(), "ardrop cuda_ext: relu backward needs y");
  at::Tensor y = operand(*y_, like, "y");
  TORCH_CHECK(y.sizes() == gy.sizes(), "ardrop cuda_ext: y and grad_y shapes differ");
  return y;
}

const void* ptr_or_null(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr() : nullptr;
}

struct RowDims {
  int batch, out_f, in_f, n_out, n_in;
};

RowDims row_dims(const at::Tensor& x, const at::Tensor& w, int64_t out_dp, int64_t out_offset,
                 int64_t in_dp, int64_t in_offset) {
  TORCH_CHECK(w.dim() == 2 && x.dim() == 2, "ardrop cuda_ext: weight and x must be 2-D");
  TORCH_CHECK(out_dp >= 1 && out_offset >= 0 && out_offset < out_dp && in_dp >= 1 &&
                  in_offset >= 0 && in_offset < in_dp,
              "ardrop cuda_ext: need dp >= 1 and 0 <= offset < dp");
  as_int(out_dp, "out_dp");
  as_int(in_dp, "in_dp");
  RowDims d{};
  d.batch = as_int(x.size(0), "batch");
  d.out_f = as_int(w.size(0), "out_features");
  d.in_f = as_int(w.size(1), "in_features");
  d.n_out = d.out_f > out_offset ? static_cast<int>((d.out_f - out_offset + out_dp - 1) / out_dp) : 0;
  d.n_in = d.in_f > in_offset ? static_cast<int>((d.in_f - in_offset + in_dp - 1) / in_dp) : 0;
  TORCH_CHECK(x.size(1) == d.n_in, "ardrop cuda_ext: compact x has ", x.size(1),
              " columns but the input pattern keeps ", d.n_in, " of ", d.in_f);
  return d;
}

at::Tensor row_forward(const at::Tensor& x_, const at::Tensor& w_,
                       const std::optional<at::Tensor>& bias_, int64_t out_dp,
                       int64_t out_offset, int64_t in_dp, int64_t in_offset, double in_scale,
                       double out_scale, bool relu, int64_t stream) {
  const at::Tensor x = operand(x_, x_, "x"), w = operand(w_, x_, "weight");
  const RowDims d = row_dims(x, w, out_dp, out_offset, in_dp, in_offset);
  std::optional<at::Tensor> bias;
  if (bias_.has_value() && bias_->defined()) {
    bias = operand(*bias_, x_, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == d.out_f,
                "ardrop cuda_ext: bias must have out_features entries");
  }
  at::Tensor y = at::empty({d.batch, d.n_out}, x.options());
  check_launch(ardrop_row_forward(dtype_code(x), x.data_ptr(), w.data_ptr(), ptr_or_null(bias),
                                  y.data_ptr(), d.batch, d.in_f, d.n_out, d.n_in,
                                  static_cast<int>(out_dp), static_cast<int>(out_offset),
                                  static_cast<int>(in_dp), static_cast<int>(in_offset),
                                  static_cast<float>(in_scale), static_cast<float>(out_scale),
                                  relu ? 1 : 0, stream_ptr(stream)),
               "row forward");
  return y;
}

// Returns (grad_x or undefined, grad_weight or undefined, grad_bias or undefined).
std::vector<at::Tensor> row_backward(const at::Tensor& gy_, const std::optional<at::Tensor>& y_,
                                     const at::Tensor& x_, const at::Tensor& w_, int64_t out_dp,
                                     int64_t out_offset, int64_t in_dp, int64_t in_offset,
                                     double in_scale, double out_scale, bool relu, bool need_x,
                                     bool need_w, bool need_b, int64_t stream) {
  const at::Tensor x = operand(x_, x_, "x"), w = operand(w_, x_, "weight");
  const at::Tensor gy = operand(gy_, x_, "grad_y");
  const RowDims d = row_dims(x, w, out_dp, out_offset, in_dp, in_offset);
  TORCH_CHECK(gy.dim() == 2 && gy.size(0) == d.batch && gy.size(1) == d.n_out,
              "ardrop cuda_ext: grad_y must be [batch, kept outputs]");
  const at::Tensor y = relu_output(y_, gy, x_, relu);
  const void* yp = relu ? y.data_ptr() : nullptr;
  const int code = dtype_code(x);
  const float in_s = static_cast<float>(in_scale), out_s = static_cast<float>(out_scale);
  const int op = static_cast<int>(out_dp), oo = static_cast<int>(out_offset);
  const int ip = static_cast<int>(in_dp), io = static_cast<int>(in_offset);
  at::Tensor gx, gw, gb;
  if (need_x) {
    gx = at::empty({d.batch, d.n_in}, x.options());
    check_launch(ardrop_row_grad_input(code, gy.data_ptr(), yp, w.data_ptr(), gx.data_ptr(),
                                       d.batch, d.in_f, d.n_out, d.n_in, op, oo, ip, io, in_s,
                                       out_s, relu ? 1 : 0, stream_ptr(stream)),
                 "row grad-input");
  }
  if (need_w) {
    gw = at::zeros_like(w);  // dropped rows/columns stay exactly zero
    check_launch(ardrop_row_grad_weight(code, gy.data_ptr(), yp, x.data_ptr(), gw.data_ptr(),
                                        d.batch, d.in_f, d.n_out, d.n_in, op, oo, ip, io, in_s,
                                        out_s, relu ? 1 : 0, stream_ptr(stream)),
                 "row grad-weight");
  }
  if (need_b) {
    gb = at::zeros({d.out_f}, x.options());
    check_launch(ardrop_grad_bias(code, gy.data_ptr(), yp, gb.data_ptr(), d.batch, d.n_out, op,
                                  oo, out_s, relu ? 1 : 0, stream_ptr(stream)),
                 "row grad-bias");
  }
  return {gx, gw, gb};
}

struct TileDims {
  int batch, out_f, in_f;
};

TileDims tile_dims(const at::Tensor& x, const at::Tensor& w, int64_t dp, int64_t offset,
                   int64_t tile) {
  TORCH_CHECK(w.dim() == 2 && x.dim() == 2, "ardrop cuda_ext: weight and x must be 2-D");
  TORCH_CHECK(dp >= 1 && offset >= 0 && offset < dp && tile >= 1,
              "ardrop cuda_ext: need dp >= 1, 0 <= offset < dp and tile >= 1");
  as_int(dp, "dp");
  as_int(tile, "tile");
  TORCH_CHECK(x.size(1) == w.size(1), "ardrop cuda_ext: x has ", x.size(1),
              " features but weight expects ", w.size(1));
  return TileDims{as_int(x.size(0), "batch"), as_int(w.size(0), "out_features"),
                  as_int(w.size(1), "in_features")};
}

at::Tensor tile_forward(const at::Tensor& x_, const at::Tensor& w_,
                        const std::optional<at::Tensor>& bias_, int64_t dp, int64_t offset,
                        int64_t tile, double scale, bool relu, int64_t stream) {
  const at::Tensor x = operand(x_, x_, "x"), w = operand(w_, x_, "weight");
  const TileDims d = tile_dims(x, w, dp, offset, tile);
  std::optional<at::Tensor> bias;
  if (bias_.has_value() && bias_->defined()) {
    bias = operand(*bias_, x_, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == d.out_f,
                "ardrop cuda_ext: bias must have out_features entries");
  }
  at::Tensor y = at::empty({d.batch, d.out_f}, x.options());
  check_launch(ardrop_tile_forward(dtype_code(x), x.data_ptr(), w.data_ptr(), ptr_or_null(bias),
                                   y.data_ptr(), d.batch, d.out_f, d.in_f, static_cast<int>(dp),
                                   static_cast<int>(offset), static_cast<int>(tile),
                                   static_cast<float>(scale), relu ? 1 : 0, stream_ptr(stream)),
               "tile forward");
  return y;
}

std::vector<at::Tensor> tile_backward(const at::Tensor& gy_, const std::optional<at::Tensor>& y_,
                                      const at::Tensor& x_, const at::Tensor& w_, int64_t dp,
                                      int64_t offset, int64_t tile, double scale, bool relu,
                                      bool need_x, bool need_w, bool need_b, int64_t stream) {
  const at::Tensor x = operand(x_, x_, "x"), w = operand(w_, x_, "weight");
  const at::Tensor gy = operand(gy_, x_, "grad_y");
  const TileDims d = tile_dims(x, w, dp, offset, tile);
  TORCH_CHECK(gy.dim() == 2 && gy.size(0) == d.batch && gy.size(1) == d.out_f,
              "ardrop cuda_ext: grad_y must be [batch, out_features]");
  const at::Tensor y = relu_output(y_, gy, x_, relu);
  const void* yp = relu ? y.data_ptr() : nullptr;
  const int code = dtype_code(x);
  const int p = static_cast<int>(dp), o = static_cast<int>(offset), t = static_cast<int>(tile);
  const float s = static_cast<float>(scale);
  at::Tensor gx, gw, gb;
  if (need_x) {
    gx = at::empty({d.batch, d.in_f}, x.options());
    check_launch(ardrop_tile_grad_input(code, gy.data_ptr(), yp, w.data_ptr(), gx.data_ptr(),
                                        d.batch, d.out_f, d.in_f, p, o, t, s, relu ? 1 : 0,
                                        stream_ptr(stream)),
                 "tile grad-input");
  }
  if (need_w) {
    gw = at::zeros_like(w);  // dropped tiles stay exactly zero
    check_launch(ardrop_tile_grad_weight(code, gy.data_ptr(), yp, x.data_ptr(), gw.data_ptr(),
                                         d.batch, d.out_f, d.in_f, p, o, t, s, relu ? 1 : 0,
                                         stream_ptr(stream)),
                 "tile grad-weight");
  }
  if (need_b) {
    gb = at::zeros({d.out_f}, x.options());
    check_launch(ardrop_grad_bias(code, gy.data_ptr(), yp, gb.data_ptr(), d.batch, d.out_f, 1, 0,
                                  1.f, relu ? 1 : 0, stream_ptr(stream)),
                 "tile grad-bias");
  }
  return {gx, gw, gb};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ardrop approximate-dropout kernels (row = compact_linear, tile = tile_linear)";
  m.def("row_forward", &row_forward, "compact_linear forward on kept rows/columns only");
  m.def("row_backward", &row_backward, "compact_linear grad-input / grad-weight / grad-bias");
  m.def("tile_forward", &tile_forward, "tile_linear forward over kept tiles only");
  m.def("tile_backward", &tile_backward, "tile_linear grad-input / grad-weight / grad-bias");
#ifdef ARDROP_HOST_EMULATION
  m.attr("emulated") = true;
#else
  m.attr("emulated") = false;
#endif
}
