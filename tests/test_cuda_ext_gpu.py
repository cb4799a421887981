"""cuda_ext kernels vs an independent float64 dense reference on explicit masks.

Every case runs on two backends:
  * "cuda": the real kernels on a GPU (marked gpu; skipped without CUDA);
  * "emulated": the same kernel bodies compiled as host C++ and run with one OS thread
    per CUDA thread (cuda_ext/emulation), linked with the real binding and autograd
    wrappers, so index/tiling/stride mistakes are caught on machines without a GPU.
    fp32 only.
"""
from __future__ import annotations

import pytest
import torch

from cuda_ext.functions import compact_linear_with, tile_linear_with

HAS_CUDA = torch.cuda.is_available()
FP32_TOL = 1e-5
HALF_TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}
PATTERNS = [(dp, off) for dp in range(1, 9) for off in range(dp)]


# ----------------------------------------------------------------------------- backends
@pytest.fixture(scope="session")
def cuda_ext_module():
    if not HAS_CUDA:
        pytest.skip("CUDA is not available (torch.cuda.is_available() is False)")
    from ardrop.functional.kernel_check import run_self_check
    from cuda_ext import loader

    loader.hand_over_self_check(run_self_check)
    return loader.load()  # a GPU machine must build the kernels: failure fails the test


def _backend(request, name):
    if name == "cuda":
        return request.getfixturevalue("cuda_ext_module"), "cuda"
    return request.getfixturevalue("emulated_ext"), "cpu"


gpu = pytest.mark.gpu
BACKENDS = [pytest.param("cuda", marks=gpu, id="cuda"), pytest.param("emulated", id="emulated")]


# ---------------------------------------------------------------------------- references
def ref_compact(x, w, b, out_dp, out_off, in_dp, in_off, in_s, out_s, relu, gy):
    """float64 masked dense forward/backward; returns y (compact) and full-size grads."""
    out_f, in_f = w.shape
    row_keep = torch.tensor([r % out_dp == out_off for r in range(out_f)])
    col_keep = torch.tensor([c % in_dp == in_off for c in range(in_f)])
    xl, wl = x.double().detach().requires_grad_(), w.double().detach().requires_grad_()
    bl = b.double().detach().requires_grad_() if b is not None else None
    x_full = torch.zeros(x.shape[0], in_f, dtype=torch.float64)
    x_full[:, col_keep] = xl
    mask = (row_keep[:, None] & col_keep[None, :]).double()
    z = in_s * x_full @ (wl * mask).T
    if bl is not None:
        z = z + bl
    y_full = (torch.relu(z) if relu else z) * out_s
    y = y_full[:, row_keep]
    y.backward(gy.double())
    return y.detach(), xl.grad, wl.grad, (bl.grad if bl is not None else None), mask


def ref_tile(x, w, b, dp, offset, tile, scale, relu, gy):
    out_f, in_f = w.shape
    mask = torch.zeros(out_f, in_f, dtype=torch.float64)
    for r in range(out_f):
        for c in range(in_f):
            if (r // tile + c // tile) % dp == offset:
                mask[r, c] = 1.0
    xl, wl = x.double().detach().requires_grad_(), w.double().detach().requires_grad_()
    bl = b.double().detach().requires_grad_() if b is not None else None
    z = xl @ (scale * wl * mask).T
    if bl is not None:
        z = z + bl
    y = torch.relu(z) if relu else z
    y.backward(gy.double())
    return y.detach(), xl.grad, wl.grad, (bl.grad if bl is not None else None), mask


def rel_err(got, ref):
    return ((got.double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def check(name, got, ref, tol):
    assert got is not None, f"{name}: missing"
    assert tuple(got.shape) == tuple(ref.shape), f"{name}: {tuple(got.shape)} vs {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = rel_err(got, ref)
    assert err < tol, f"{name}: relative error {err:.3g} >= {tol}"


def _data(shape, dtype, device, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------- runners
def run_compact(ext, device, dtype, batch, out_f, in_f, out_dp, out_off, in_dp, in_off,
                relu=True, bias=True, in_s=1.3, out_s=2.0, need_x=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n_in, n_out = len(range(in_off, in_f, in_dp)), len(range(out_off, out_f, out_dp))
    x = _data((batch, n_in), dtype, device, gen).requires_grad_(need_x)
    w = _data((out_f, in_f), dtype, device, gen).requires_grad_()
    b = _data((out_f,), dtype, device, gen).requires_grad_() if bias else None
    gy = _data((batch, n_out), dtype, device, gen)
    y = compact_linear_with(ext, x, w, b, out_dp, out_off, in_dp, in_off, in_s, out_s, relu)
    y.backward(gy)
    ry, rgx, rgw, rgb, mask = ref_compact(x.cpu(), w.cpu(), None if b is None else b.cpu(),
                                          out_dp, out_off, in_dp, in_off, in_s, out_s, relu,
                                          gy.cpu())
    tol = FP32_TOL if dtype == torch.float32 else HALF_TOL[dtype]
    assert y.dtype == dtype and y.device.type == device
    check("y", y.detach(), ry, tol)
    if need_x:
        check("grad x", x.grad, rgx, tol)
    else:
        assert x.grad is None
    check("grad weight", w.grad, rgw, tol)
    assert (w.grad.cpu()[mask == 0] == 0).all(), "grad weight not exactly zero outside O x I"
    if bias:
        check("grad bias", b.grad, rgb, tol)
        row_keep = torch.tensor([r % out_dp == out_off for r in range(out_f)])
        assert (b.grad.cpu()[~row_keep] == 0).all(), "grad bias not zero on dropped rows"


def run_tile(ext, device, dtype, batch, out_f, in_f, dp, offset, tile, relu=True, bias=True,
             scale=1.7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = _data((batch, in_f), dtype, device, gen).requires_grad_()
    w = _data((out_f, in_f), dtype, device, gen).requires_grad_()
    b = _data((out_f,), dtype, device, gen).requires_grad_() if bias else None
    gy = _data((batch, out_f), dtype, device, gen)
    y = tile_linear_with(ext, x, w, b, dp, offset, tile, scale, relu)
    y.backward(gy)
    ry, rgx, rgw, rgb, mask = ref_tile(x.cpu(), w.cpu(), None if b is None else b.cpu(), dp,
                                       offset, tile, scale, relu, gy.cpu())
    tol = FP32_TOL if dtype == torch.float32 else HALF_TOL[dtype]
    check("y", y.detach(), ry, tol)
    if mask.sum() > 0:
        check("grad x", x.grad, rgx, tol)
        check("grad weight", w.grad, rgw, tol)
    else:  # this offset keeps no tile at all: y = act(bias), zero gradients
        assert (x.grad == 0).all() and (w.grad == 0).all()
    assert (w.grad.cpu()[mask == 0] == 0).all(), "grad weight not exactly zero on dropped tiles"
    if bias:
        check("grad bias", b.grad, rgb, tol)


# --------------------------------------------------------------------------------- cases
def _sweep_params():
    """Full dp sweep on every backend (the emulated sweep takes ~15 s on 2 cores)."""
    out = []
    for dp, off in PATTERNS:
        out.append(pytest.param("cuda", dp, off, marks=gpu, id=f"cuda-dp{dp}-o{off}"))
        out.append(pytest.param("emulated", dp, off, id=f"emu-dp{dp}-o{off}"))
    return out


@pytest.mark.parametrize("backend,dp,off", _sweep_params())
def test_compact_every_pattern(request, backend, dp, off):
    ext, device = _backend(request, backend)
    in_dp = dp % 3 + 1
    # ragged: neither 77 nor 100 is a multiple of any dp > 1 or of the block tiles
    run_compact(ext, device, torch.float32, 37, 77, 100, dp, off, in_dp, off % in_dp)
    run_compact(ext, device, torch.float32, 5, 77, 100, dp, off, 1, 0, relu=False,
                bias=False, need_x=False)


@pytest.mark.parametrize("backend,dp,off", _sweep_params())
def test_tile_every_pattern(request, backend, dp, off):
    ext, device = _backend(request, backend)
    # 77 x 100 with t=32 is a ragged 3 x 4 tile grid: dp 7, 8 with offset >= 6 keep nothing
    run_tile(ext, device, torch.float32, 37, 77, 100, dp, off, 32)
    run_tile(ext, device, torch.float32, 9, 45, 61, dp, off, 8, relu=False, bias=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile", [5, 64, 80, 500])
def test_tile_sizes(request, backend, tile):
    """t < 32, t >= 64 (64-wide blocks, several sub-blocks for 80), t > matrix."""
    ext, device = _backend(request, backend)
    run_tile(ext, device, torch.float32, 21, 170, 150, 3, 1, tile)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sm_count", [1, 1 << 20])
def test_row_both_block_configs(request, backend, sm_count):
    """128x128 and 64x64 row configs (the emulator forces either; a GPU picks by size)."""
    ext, device = _backend(request, backend)
    if backend == "emulated":
        from cuda_ext.emulation import set_sm_count

        set_sm_count(ext, sm_count)
    try:
        run_compact(ext, device, torch.float32, 130, 300, 270, 2, 1, 3, 2)
    finally:
        if backend == "emulated":
            set_sm_count(ext, 132)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_chaining(request, backend):
    """Layer 1 keeps rows O; layer 2 reads only those columns, compact end to end."""
    ext, device = _backend(request, backend)
    gen = torch.Generator().manual_seed(3)
    dp, off, batch = 3, 2, 19
    w1 = _data((70, 50), torch.float32, device, gen).requires_grad_()
    w2 = _data((40, 70), torch.float32, device, gen).requires_grad_()
    x = _data((batch, 50), torch.float32, device, gen)
    s = 70 / len(range(off, 70, dp))
    h = compact_linear_with(ext, x, w1, None, dp, off, 1, 0, out_scale=s, relu=True)
    y = compact_linear_with(ext, h, w2, None, 1, 0, dp, off)
    y.sum().backward()
    keep = torch.tensor([r % dp == off for r in range(70)], dtype=torch.float64)
    w1r, w2r = w1.detach().cpu().double().requires_grad_(), w2.detach().cpu().double().requires_grad_()
    hr = torch.relu(x.cpu().double() @ w1r.T) * s * keep
    yr = hr @ w2r.T
    yr.sum().backward()
    check("chained y", y.detach(), yr.detach(), FP32_TOL)
    check("grad w1", w1.grad, w1r.grad, FP32_TOL)
    check("grad w2", w2.grad, w2r.grad, FP32_TOL)


def test_noncontiguous_and_validation(emulated_ext):
    """A strided compact input works; wrong arguments are refused before any kernel runs.

    ardrop.functional checks arguments where they enter (cuda_ext's wrappers trust it);
    the binding refuses, whoever calls, what would index out of bounds or mix dtypes.
    """
    from ardrop.functional import compact_linear, tile_linear

    gen = torch.Generator().manual_seed(5)
    big = torch.randn(9, 40, generator=gen)
    x = big[:, ::2]  # non-contiguous compact input (20 columns = in_dp 2 of 40)
    w = torch.randn(30, 40, generator=gen, requires_grad=True)
    y = compact_linear_with(emulated_ext, x, w, None, 2, 0, 2, 1)
    ref = x.double() @ w.detach().double()[0::2, 1::2].T
    check("y", y.detach(), ref, FP32_TOL)
    with pytest.raises(ValueError, match="expects 20"):
        compact_linear(big, w, None, 2, 0, 2, 1)
    with pytest.raises(ValueError, match="offset must be in 0..dp-1"):
        compact_linear(x, w, None, 2, 2, 2, 1)
    with pytest.raises(ValueError, match="in_scale"):
        compact_linear(x, w, None, 2, 0, 2, 1, in_scale=0.0)
    with pytest.raises(ValueError, match="dtype"):
        compact_linear(x.half(), w, None, 2, 0, 2, 1)
    with pytest.raises(ValueError, match="tile size"):
        tile_linear(big, w, None, 2, 0, 0, 1.0)
    with pytest.raises(ValueError, match="exceeds the 30 units"):
        compact_linear(x, w, None, 40, 35, 2, 1)
    with pytest.raises(RuntimeError, match="keeps 20 of 40"):
        compact_linear_with(emulated_ext, big, w, None, 2, 0, 2, 1)
    with pytest.raises(RuntimeError, match="0 <= offset < dp"):
        compact_linear_with(emulated_ext, x, w, None, 2, 2, 2, 1)
    with pytest.raises(RuntimeError, match="has dtype"):
        compact_linear_with(emulated_ext, x, w.detach().half(), None, 2, 0, 2, 1)
    with pytest.raises(RuntimeError, match="tile >= 1"):
        tile_linear_with(emulated_ext, big, w, None, 2, 0, 0, 1.0)


def test_leading_dims_and_default_scale(emulated_ext):
    """Same contract as ardrop.functional: x may be [..., features]; its default scale is exact."""
    from ardrop.functional import tile_linear
    from ardrop.patterns import Pattern

    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 4, 30, generator=gen)
    w = torch.randn(20, 30, generator=gen)
    y = compact_linear_with(emulated_ext, x[..., 1::3], w, None, 3, 2, 3, 1)
    assert y.shape == (3, 4, len(range(2, 20, 3)))
    check("y", y.reshape(-1, y.shape[-1]),
          x.reshape(-1, 30)[:, 1::3].double() @ w.double()[2::3, 1::3].T, FP32_TOL)
    # 20 x 30 with t=16: tiles (0,0) 16x16, (0,1) 16x14, (1,0) 4x16, (1,1) 4x14; dp=2,
    # offset=1 keeps (0,1) and (1,0): 224 + 64 = 288 of 600 weights
    y = tile_linear_with(emulated_ext, x, w, None, 2, 1, 16, Pattern("tile", 2, 1, 16).tile_scale(20, 30))
    _, _, _, _, mask = ref_tile(x.reshape(-1, 30), w, None, 2, 1, 16, 1.0, False,
                                torch.zeros(12, 20))
    assert mask.sum() == 288
    check("tile y", y.reshape(12, 20), x.reshape(-1, 30).double() @ (600 / 288 * w.double() * mask).T,
          FP32_TOL)
    with pytest.raises(ValueError, match="tile diagonals"):
        tile_linear(x, w, None, 5, 4, 16)


def test_emulated_rejects_half(emulated_ext):
    x = torch.randn(4, 8, dtype=torch.float16)
    w = torch.randn(6, 8, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="float32 only"):
        tile_linear_with(emulated_ext, x, w, None, 1, 0, 32, 1.0)


# ------------------------------------------------------------------------- GPU-only cases
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("dp,off", PATTERNS)
def test_half_precision_every_pattern(cuda_ext_module, dtype, dp, off):
    in_dp = dp % 3 + 1
    run_compact(cuda_ext_module, "cuda", dtype, 37, 77, 100, dp, off, in_dp, off % in_dp)
    run_tile(cuda_ext_module, "cuda", dtype, 37, 77, 100, dp, off, 32)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_ragged(cuda_ext_module, dtype):
    """Big enough for the 128x128 row config and many kept tiles; ragged everywhere."""
    tol_dtype = dtype
    run_compact(cuda_ext_module, "cuda", tol_dtype, 300, 2050, 1030, 2, 1, 3, 0)
    run_tile(cuda_ext_module, "cuda", tol_dtype, 300, 1030, 2050, 3, 2, 32)


@gpu
def test_autocast_fp16(cuda_ext_module):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(16, 64, generator=gen).cuda()
    w = torch.randn(48, 64, generator=gen).cuda().requires_grad_()
    b = torch.randn(48, generator=gen).cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.float16):
        y = tile_linear_with(cuda_ext_module, x, w, b, 2, 1, 32, 2.0, relu=True)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


@gpu
def test_public_entry_points_use_kernels(cuda_ext_module):
    import cuda_ext

    assert cuda_ext.available()
    x = torch.randn(8, 30, device="cuda")
    w = torch.randn(20, 30, device="cuda", requires_grad=True)
    y = cuda_ext.compact_linear_cuda(x, w, None, 2, 0, 1, 0)
    check("y", y.detach(), (x.double() @ w.detach().double()[0::2].T).cpu(), FP32_TOL)
    y = cuda_ext.tile_linear_cuda(x, w, None, 1, 0, 32, 1.0)
    check("y", y.detach(), (x.double() @ w.detach().double().T).cpu(), FP32_TOL)


@gpu
def test_auto_mode_measures_each_case_once(cuda_ext_module, monkeypatch):
    """On a GPU, compact_linear times kernels vs torch for a new case and reuses the verdict."""
    from ardrop.functional import compact_linear
    from cuda_ext import autotune

    monkeypatch.setenv("ARDROP_CUDA_EXT", "auto")
    tuner = autotune.Autotune()
    monkeypatch.setattr(autotune, "AUTOTUNE", tuner)
    x = torch.randn(64, 256, device="cuda")
    w = torch.randn(512, 256, device="cuda", requires_grad=True)
    for _ in range(3):
        compact_linear(x, w, None, 2, 1).sum().backward()
    assert len(tuner.choices) == 1 and len(tuner.timings) == 1
    (t_kernels, t_torch), = tuner.timings.values()
    assert t_kernels > 0 and t_torch > 0
    print(f"autotune compact 64x256->512 dp2: kernels {t_kernels:.3f} ms, torch {t_torch:.3f} ms")


@gpu
def test_auto_mode_under_inference_mode_matches_the_reference(cuda_ext_module, monkeypatch):
    """Lightning's validation runs the layers under inference_mode; auto mode must tune
    (forward only) and compute there, for both ops."""
    from ardrop.functional import compact_linear, tile_linear
    from cuda_ext import autotune

    monkeypatch.setenv("ARDROP_CUDA_EXT", "auto")
    monkeypatch.setattr(autotune, "AUTOTUNE", autotune.Autotune())
    torch.manual_seed(0)
    x = torch.randn(32, 96, device="cuda")
    w = torch.randn(64, 96, device="cuda", requires_grad=True)
    b = torch.randn(64, device="cuda", requires_grad=True)
    gy = torch.zeros(32, 32, dtype=torch.float64)
    scale = 2.0  # dp=2 keeps half of the tiles
    with torch.inference_mode():
        y = compact_linear(x, w, b, 2, 1)
        yt = tile_linear(x, w, b, 2, 0, 32, scale=scale)
    ref = ref_compact(x.cpu(), w.detach().cpu(), b.detach().cpu(), 2, 1, 1, 0, 1.0, 1.0, False, gy)[0]
    assert (y.double().cpu() - ref).abs().max().item() < 1e-4 * ref.abs().max().item()
    gyt = torch.zeros(32, 64, dtype=torch.float64)
    ref_t = ref_tile(x.cpu(), w.detach().cpu(), b.detach().cpu(), 2, 0, 32, scale, False, gyt)[0]
    assert (yt.double().cpu() - ref_t).abs().max().item() < 1e-4 * ref_t.abs().max().item()
