/* Fused CPU passes for ardrop's memory-bound steps (see ardrop/native/__init__.py).
 *
 * Plain C with OpenMP, loaded with ctypes: no torch headers, so it builds in about a
 * second. It must be loaded after torch so that its OpenMP calls resolve to the
 * libgomp torch already loaded and share torch's thread pool and thread count.
 *
 * Each kernel walks `rows` rows of `cols` contiguous elements; row r of a tensor starts
 * at base + r * row_stride. That covers the views of whole tensors, rows offset::dp and
 * a bias vector as one row. The tile kernels walk a tile pattern's kept runs of a whole
 * tensor. Copies of tile blocks (the packed gathers and scatters) stay on torch's ops:
 * kernels for them were measured no faster, as there is nothing to fuse in a copy.
 */
#include <stdint.h>

#define PARALLEL_MIN 32768 /* elements below which one thread is faster than waking two */

/* w[c] += kw * g[c] and b[c] += kb * g[c] over one contiguous run of n: g is read once.
 * (kw and kb are the enclosing kernel's.) */
#define AXPY2_RUN(T, w_, b_, g_, n)                                                    \
    {                                                                                  \
        T *wr = (w_), *br = (b_);                                                      \
        const T *gr = (g_);                                                            \
        _Pragma("omp simd")                                                            \
        for (int64_t c = 0; c < (n); c++) {                                            \
            const T x = gr[c];                                                         \
            wr[c] += kw * x;                                                           \
            br[c] += kb * x;                                                           \
        }                                                                              \
    }

/* w += kw * g and b += kb * g in one pass: g is read once instead of twice.
 * `threads` is torch.get_num_threads(), passed because OpenMP's count is per thread. */
#define AXPY2(NAME, T)                                                                 \
    void NAME(T *w, T *b, const T *g, int64_t rows, int64_t cols, int64_t rs_w,        \
              int64_t rs_b, int64_t rs_g, double kw_, double kb_, int threads) {       \
        const T kw = (T)kw_, kb = (T)kb_;                                              \
        _Pragma("omp parallel for schedule(static) num_threads(threads)                \
                 if (rows * cols >= PARALLEL_MIN)")                                    \
        for (int64_t r = 0; r < rows; r++)                                             \
            AXPY2_RUN(T, w + r * rs_w, b + r * rs_b, g + r * rs_g, cols)               \
    }

/* One momentum-SGD step over a whole tensor held in a moving frame, written back as true
 * values: (b, w) = M (b, w) + (eb, ew) g with M = [[bb, bw], [wb, ww]]. The caller then
 * resets the frame to the identity, so the next read needs no buffer stream. */
#define FRAME_STEP(NAME, T)                                                            \
    void NAME(T *w, T *b, const T *g, int64_t n, double bb_, double bw_, double wb_,   \
              double ww_, double eb_, double ew_, int threads) {                       \
        const T bb = (T)bb_, bw = (T)bw_, wb = (T)wb_, ww = (T)ww_;                    \
        const T eb = (T)eb_, ew = (T)ew_;                                              \
        _Pragma("omp parallel for simd schedule(static) num_threads(threads)           \
                 if (n >= PARALLEL_MIN)")                                              \
        for (int64_t i = 0; i < n; i++) {                                              \
            const T sb = b[i], sw = w[i], x = g[i];                                    \
            b[i] = bb * sb + bw * sw + eb * x;                                         \
            w[i] = wb * sb + ww * sw + ew * x;                                         \
        }                                                                              \
    }

/* Whole rows of dst: src's columns at off, off+step, ... and exact zeros in between.
 * One write pass replaces zeroing the rows and a strided read-modify-write: each row
 * is zeroed while it sits in L1, then its kept columns are filled. */
#define SCATTER_COLS(NAME, T)                                                          \
    void NAME(T *dst, const T *src, int64_t rows, int64_t cols, int64_t rs_dst,        \
              int64_t rs_src, int64_t step, int64_t off, int threads) {                \
        const int64_t kept = cols > off ? (cols - off + step - 1) / step : 0;          \
        _Pragma("omp parallel for schedule(static) num_threads(threads)                \
                 if (rows * cols >= PARALLEL_MIN)")                                    \
        for (int64_t r = 0; r < rows; r++) {                                           \
            T *d = dst + r * rs_dst;                                                   \
            const T *s = src + r * rs_src;                                             \
            _Pragma("omp simd")                                                        \
            for (int64_t c = 0; c < cols; c++) d[c] = (T)0;                            \
            for (int64_t c = 0; c < kept; c++) d[off + c * step] = s[c];               \
        }                                                                              \
    }


/* The tile pattern's kept runs: row r lies in tile-row i = r / t, which keeps tile
 * columns j = (offset - i) mod dp, + dp, ...; each is a run of t contiguous elements
 * (fewer at a ragged right edge). One call covers the whole pattern, so a step costs one
 * pass over the kept tiles instead of a torch op per tile class and edge piece. */
#define TILE_RUNS_BEGIN                                                                \
        _Pragma("omp parallel for schedule(static) num_threads(threads)                \
                 if (rows * cols / dp >= PARALLEL_MIN)")                               \
        for (int64_t r = 0; r < rows; r++) {                                           \
            const int64_t i = r / t;                                                   \
            for (int64_t c0 = ((offset - i) % dp + dp) % dp * t; c0 < cols;            \
                 c0 += dp * t) {                                                       \
                const int64_t len = cols - c0 < t ? cols - c0 : t;
#define TILE_RUNS_END }}

/* axpy2 over the kept tiles of whole row-major tensors (row stride rs, shared). */
#define TILE_AXPY2(NAME, T)                                                            \
    void NAME(T *w, T *b, const T *g, int64_t rows, int64_t cols, int64_t rs,          \
              int64_t t, int64_t dp, int64_t offset, double kw_, double kb_,           \
              int threads) {                                                           \
        const T kw = (T)kw_, kb = (T)kb_;                                              \
        TILE_RUNS_BEGIN                                                                \
            AXPY2_RUN(T, w + r * rs + c0, b + r * rs + c0, g + r * rs + c0, len)       \
        TILE_RUNS_END                                                                  \
    }

/* Zero the kept tiles of a row-major tensor (a gradient buffer's previous block). */
#define TILE_ZERO(NAME, T)                                                             \
    void NAME(T *d, int64_t rows, int64_t cols, int64_t rs, int64_t t, int64_t dp,     \
              int64_t offset, int threads) {                                           \
        TILE_RUNS_BEGIN                                                                \
            T *dr = d + r * rs + c0;                                                   \
            _Pragma("omp simd")                                                        \
            for (int64_t c = 0; c < len; c++) dr[c] = (T)0;                            \
        TILE_RUNS_END                                                                  \
    }

AXPY2(ardrop_axpy2_f32, float)
AXPY2(ardrop_axpy2_f64, double)
FRAME_STEP(ardrop_frame_step_f32, float)
FRAME_STEP(ardrop_frame_step_f64, double)
SCATTER_COLS(ardrop_scatter_cols_f32, float)
SCATTER_COLS(ardrop_scatter_cols_f64, double)
TILE_AXPY2(ardrop_tile_axpy2_f32, float)
TILE_AXPY2(ardrop_tile_axpy2_f64, double)
TILE_ZERO(ardrop_tile_zero_f32, float)
TILE_ZERO(ardrop_tile_zero_f64, double)

/* The OpenMP runtime's thread count as this library sees it (tests compare it with torch's). */
#include <omp.h>
int ardrop_omp_max_threads(void) { return omp_get_max_threads(); }
