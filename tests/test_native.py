"""The fused CPU kernels (`ardrop.native`) against plain torch ops, and their loader.

Each kernel is checked on views of larger tensors so that a wrong row stride or a write
past a row's end shows up in the elements that must stay untouched. The layers'
end-to-end equivalence with the masked reference runs with the kernels on (the
default) in the other test files, and with them off where those tests say so.
"""

import pytest
import torch

from ardrop import native
from ardrop.native import library

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-6, torch.float64: 1e-14}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _views(t):
    """Whole tensor, row-strided rows, a column prefix (row stride > row length), one row, a bias."""
    return {
        "whole": lambda: t,
        "rows::3": lambda: t[1::3],
        "cols[:-5]": lambda: t[:, :-5],
        "row": lambda: t[4],
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 13), (517, 300)])  # one thread, then the parallel path
@pytest.mark.parametrize("view", ["whole", "rows::3", "cols[:-5]", "row"])
def test_axpy2_matches_two_torch_adds_and_writes_nothing_else(dtype, shape, view):
    g = _gen()
    w, b, grad = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    w_ref, b_ref = w.clone(), b.clone()
    _views(w_ref)[view]().add_(_views(grad)[view](), alpha=0.3)
    _views(b_ref)[view]().add_(_views(grad)[view](), alpha=-2.5)
    assert native.axpy2_(_views(w)[view](), _views(b)[view](), _views(grad)[view](), 0.3, -2.5)
    assert torch.allclose(w, w_ref, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.allclose(b, b_ref, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 13), (517, 300)])
@pytest.mark.parametrize("step", [1, 2, 3, 7, 13])
def test_scatter_cols_writes_whole_rows_with_zeros_between(dtype, shape, step):
    g = _gen(1)
    for offset in sorted({0, step - 1, step // 2}):
        base = torch.randn(shape[0], shape[1] + 4, generator=g, dtype=dtype)
        dst = base[1::2, 2:-2]  # strided rows, each row a slice of a longer one
        src = torch.randn(dst.shape[0], len(range(offset, dst.shape[1], step)), generator=g, dtype=dtype)
        ref = base.clone()
        ref[1::2, 2:-2] = 0
        ref[1::2, 2:-2][:, offset::step] = src
        assert native.scatter_cols_(dst, src, step, offset)
        assert torch.equal(base, ref), offset


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [17, 70001])  # one thread, then the parallel path
def test_frame_step_applies_the_2x2_map_and_the_kick(dtype, n):
    g = _gen(3)
    w, b, grad = (torch.randn(n, generator=g, dtype=dtype) for _ in range(3))
    frame, kick = (0.81, 0.003, -0.0405, 0.9998), (1.0, -0.05)
    b_ref = frame[0] * b + frame[1] * w + kick[0] * grad
    w_ref = frame[2] * b + frame[3] * w + kick[1] * grad
    assert native.frame_step_(w, b, grad, frame, kick)
    assert torch.allclose(w, w_ref, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.allclose(b, b_ref, rtol=TOL[dtype], atol=TOL[dtype])
    assert not native.frame_step_(w[::2], b[::2], grad[::2], frame, kick)  # whole contiguous tensors only


def _tile_mask(shape, tile, dp, offset):
    """The SPEC's tile mask, from the pattern's own definition (independent of the kernels)."""
    from ardrop.patterns import Pattern

    return Pattern("tile", dp, offset, tile).tile_mask(*shape).bool()


TILE_CASES = [((9, 13), 4, 3, 2), ((70, 45), 8, 1, 0), ((70, 45), 8, 5, 4), ((517, 300), 32, 2, 1),
              ((517, 300), 32, 7, 3), ((600, 600), 32, 3, 0)]  # ragged edges; one thread and parallel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,tile,dp,offset", TILE_CASES)
def test_tile_axpy2_updates_exactly_the_kept_tiles(dtype, shape, tile, dp, offset):
    g = _gen(5)
    w, b, grad = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    keep = _tile_mask(shape, tile, dp, offset)
    w_ref = torch.where(keep, w + 0.3 * grad, w)
    b_ref = torch.where(keep, b - 2.5 * grad, b)
    assert native.tile_axpy2_(w, b, grad, 0.3, -2.5, tile, dp, offset)
    assert torch.allclose(w, w_ref, rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.allclose(b, b_ref, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,tile,dp,offset", TILE_CASES)
def test_tile_zero_zeroes_exactly_the_kept_tiles(dtype, shape, tile, dp, offset):
    d = torch.randn(shape, generator=_gen(6), dtype=dtype) + 10.0  # no zeros to start with
    ref = torch.where(_tile_mask(shape, tile, dp, offset), torch.zeros((), dtype=dtype), d)
    assert native.tile_zero_(d, tile, dp, offset)
    assert torch.equal(d, ref)


def test_tile_kernels_refuse_what_they_cannot_walk():
    w, b, grad = torch.randn(8, 8), torch.randn(8, 8), torch.randn(8, 8)
    before = w.clone(), b.clone()
    assert not native.tile_axpy2_(w.t(), b.t(), grad.t(), 1.0, 1.0, 4, 2, 0)  # column-major
    assert not native.tile_axpy2_(w, b, torch.randn(16, 16)[:8, :8], 1.0, 1.0, 4, 2, 0)  # other strides
    assert not native.tile_axpy2_(w, b, grad, 1.0, 1.0, 4, 2, 2)  # offset outside 0..dp-1
    assert not native.tile_axpy2_(w, b, grad, 1.0, 1.0, 0, 2, 0)  # tile size 0
    assert not native.tile_zero_(torch.zeros(8).expand(8, 8), 4, 2, 0)  # overlapping rows
    assert not native.tile_zero_(w[0], 4, 2, 0)  # not 2-D
    assert not native.tile_zero_(w.half(), 4, 2, 0)  # no half kernel
    assert torch.equal(w, before[0]) and torch.equal(b, before[1])


def test_writes_bump_version_counters_like_torch_in_place_ops():
    w, b, grad = torch.zeros(4, 6), torch.zeros(4, 6), torch.ones(4, 6)
    before = w._version, b._version
    assert native.axpy2_(w, b, grad, 1.0, 2.0)
    assert w._version > before[0] and b._version > before[1]
    x = torch.ones(3, requires_grad=True)
    z = (x * 2).exp()  # exp saves its output for backward
    assert native.axpy2_(z.detach(), torch.zeros(3), torch.ones(3), 1.0, 1.0)  # an alias: one counter
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_unsupported_layouts_are_refused_untouched():
    g = _gen(2)
    w, b, grad = (torch.randn(8, 10, generator=g) for _ in range(3))
    before = w.clone()
    assert not native.axpy2_(w[:, ::2], b[:, ::2], grad[:, ::2], 1.0, 1.0)  # strided columns
    assert not native.axpy2_(w.t(), b.t(), grad.t(), 1.0, 1.0)  # column-major
    assert not native.axpy2_(w, b, grad.double(), 1.0, 1.0)  # mixed dtypes
    assert not native.axpy2_(w[:4], b[:4], grad[:5], 1.0, 1.0)  # mismatched shapes
    assert not native.axpy2_(w.half(), b.half(), grad.half(), 1.0, 1.0)  # no half kernel
    assert not native.scatter_cols_(w, torch.randn(8, 4), 2, 0)  # src is not the kept width (5)
    assert not native.scatter_cols_(w, torch.randn(8, 5), 2, 2)  # offset outside 0..step-1
    assert torch.equal(w, before)


def test_kernels_share_torchs_openmp_runtime_and_thread_count():
    lib = native.load()
    assert len(library._openmp_runtimes()) <= 1  # no second runtime (thread pools would compete)
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert lib.ardrop_omp_max_threads() == n  # one runtime: torch's setting is seen
    finally:
        torch.set_num_threads(old)


def test_off_switch_and_bad_mode(monkeypatch):
    monkeypatch.setenv("ARDROP_NATIVE", "0")
    assert not native.available()
    w = torch.zeros(4, 4)
    assert not native.axpy2_(w, w.clone(), torch.ones(4, 4), 1.0, 1.0) and not w.any()
    monkeypatch.setenv("ARDROP_NATIVE", "fast")
    with pytest.raises(ValueError, match="ARDROP_NATIVE='fast'.*0.*auto.*require"):
        native.env_mode()


def test_a_failed_build_falls_back_with_one_warning_or_raises_when_required(monkeypatch, tmp_path):
    monkeypatch.setenv("ARDROP_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    library._reset_for_tests()
    try:
        with pytest.warns(RuntimeWarning, match="torch path is used"):
            assert not native.available()
        w = torch.zeros(3, 3)
        assert not native.axpy2_(w, w.clone(), torch.ones(3, 3), 1.0, 1.0)  # no second warning, no write
        assert not w.any()
        monkeypatch.setenv("ARDROP_NATIVE", "require")
        with pytest.raises(native.NativeUnavailable, match="C compiler"):
            native.axpy2_(w, w.clone(), torch.ones(3, 3), 1.0, 1.0)
    finally:
        monkeypatch.undo()
        library._reset_for_tests()
    assert native.available()  # the real compiler builds again afterwards


def test_a_failed_self_check_falls_back_and_the_package_wires_the_real_one(monkeypatch):
    """The loader publishes the library only after the check the package handed over passes."""
    from ardrop.native import selfcheck

    assert library._KERNELS.check is selfcheck.run_self_check

    def wrong(lib):
        assert native.axpy2_(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), 1.0, 1.0)  # sees the candidate
        raise native.NativeUnavailable("self-check: axpy2 on torch.float32 disagrees with torch")

    monkeypatch.setattr(library._KERNELS, "check", wrong)
    library._reset_for_tests()
    try:
        with pytest.warns(RuntimeWarning, match="(?s)disagrees with torch.*torch path is used"):
            assert not native.available()
        w = torch.zeros(3, 3)
        assert not native.axpy2_(w, w.clone(), torch.ones(3, 3), 1.0, 1.0) and not w.any()
    finally:
        monkeypatch.undo()
        library._reset_for_tests()
    assert native.available()


def test_a_second_openmp_runtime_is_refused(monkeypatch):
    """If the library resolved to an OpenMP runtime torch does not use, its pool would fight torch's."""
    seen = iter([{"/torch/lib/libgomp.so.1"}, {"/torch/lib/libgomp.so.1", "/usr/lib/libomp.so"}])
    monkeypatch.setattr(library, "_openmp_runtimes", lambda: next(seen))
    with pytest.raises(native.NativeUnavailable, match="own OpenMP runtime.*libomp"):
        library._load_library(library._build())


def test_cache_is_keyed_by_source_and_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("ARDROP_NATIVE_CACHE", str(tmp_path))
    first = native.build_directory()
    monkeypatch.setenv("CC", "clang-that-differs")
    assert native.build_directory() != first
    assert first.parent == tmp_path


def test_cache_is_keyed_by_the_cpu(monkeypatch, tmp_path):
    """The library is built for this CPU (-march=native), so another CPU must not share it."""
    monkeypatch.setenv("ARDROP_NATIVE_CACHE", str(tmp_path))
    first = native.build_directory()
    monkeypatch.setattr(library, "_cpu_identity", lambda: "model name : another CPU")
    assert native.build_directory() != first


def test_a_compiler_without_the_arch_flags_still_builds(monkeypatch, tmp_path):
    real = native.compiler()
    fussy = tmp_path / "fussy-cc"
    fussy.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in -march=*) echo "unknown $a" >&2; exit 1;; esac; done\n'
                     f'exec {real} "$@"\n')
    fussy.chmod(0o755)
    monkeypatch.setenv("ARDROP_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(fussy))
    monkeypatch.setenv("ARDROP_NATIVE", "require")
    library._reset_for_tests()
    try:
        w = torch.zeros(3, 3)
        assert native.axpy2_(w, w.clone(), torch.ones(3, 3), 2.0, 1.0) and torch.equal(w, torch.full((3, 3), 2.0))
        assert (native.build_directory() / native.LIB_NAME).exists()
    finally:
        monkeypatch.undo()
        library._reset_for_tests()
