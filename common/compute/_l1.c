/* Exact L1 distances between rows of bytes: the sum of |a - b| over D bytes, as int32.
 *
 * One SAD instruction (vpsadbw) sums the absolute differences of 8 byte pairs into a 64-bit lane,
 * so a 784-pixel distance costs 13 AVX-512 or 25 AVX2 instructions. Chosen at run time from what the
 * CPU supports; a plain C loop gives the same integers anywhere else. Rows must be padded to a
 * multiple of 64 bytes (zeros add nothing). The GIL is released, so Python threads can share the
 * rows of A between cores.
 *
 *   l1_block(a, b, out, d, isa="best")   a: (m, d) uint8, b: (n, d) uint8, out: (m, n) int32, all C-contiguous;
 *                                        isa: "best", "avx512", "avx2" or "portable" (one the CPU runs);
 *                                        d at most (2^31 - 1) / 255 bytes, so that every sum fits int32
 *   ssd_block(a, b, out, d, isa="best")  the same for squared L2, sum (a - b)^2 as int32 (exact below 33,000
 *                                        bytes a row); "avx512" runs the AVX2 kernel. For a few query rows
 *                                        (new images): no blocking, one pass over b per row of a
 *   dot_sparse, min_sparse               the same over sparse rows, by their nonzero pixel pairs (below)
 *   isa() -> "avx512" | "avx2" | "portable"      the widest this CPU runs
 *   supported() -> tuple of the names this CPU runs, widest first
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AEKNN_X86 1
#endif

typedef void (*kernel_fn)(const uint8_t *, const uint8_t *, int32_t *, Py_ssize_t, Py_ssize_t, Py_ssize_t);

static void l1_portable(const uint8_t *A, const uint8_t *B, int32_t *out, Py_ssize_t m, Py_ssize_t n,
                        Py_ssize_t d) {
    for (Py_ssize_t i = 0; i < m; i++) {
        const uint8_t *a = A + i * d;
        for (Py_ssize_t j = 0; j < n; j++) {
            const uint8_t *b = B + j * d;
            int32_t s = 0;
            for (Py_ssize_t t = 0; t < d; t++) s += a[t] > b[t] ? a[t] - b[t] : b[t] - a[t];
            out[i * n + j] = s;
        }
    }
}

#ifdef AEKNN_X86
#define JB 48 /* rows of B per cache block: 48 x 832 bytes stay in L2 */

__attribute__((target("avx2"))) static inline int32_t hsum256(__m256i v) {
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi64(s, _mm_unpackhi_epi64(s, s));
    return (int32_t)_mm_cvtsi128_si64(s);
}

__attribute__((target("avx2"))) static void l1_avx2(const uint8_t *A, const uint8_t *B, int32_t *out,
                                                    Py_ssize_t m, Py_ssize_t n, Py_ssize_t d) {
    const Py_ssize_t nv = d / 32;
    for (Py_ssize_t j0 = 0; j0 < n; j0 += JB) {
        const Py_ssize_t j1 = j0 + JB < n ? j0 + JB : n;
        Py_ssize_t i = 0;
        for (; i + 4 <= m; i += 4) { /* 4 rows of A x 2 rows of B: 8 accumulators */
            const uint8_t *a0 = A + i * d, *a1 = a0 + d, *a2 = a1 + d, *a3 = a2 + d;
            Py_ssize_t j = j0;
            for (; j + 2 <= j1; j += 2) {
                const uint8_t *b0 = B + j * d, *b1 = b0 + d;
                __m256i s00 = _mm256_setzero_si256(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00,
                        s30 = s00, s31 = s00;
                for (Py_ssize_t v = 0; v < nv; v++) {
                    __m256i y0 = _mm256_loadu_si256((const __m256i *)(b0 + 32 * v));
                    __m256i y1 = _mm256_loadu_si256((const __m256i *)(b1 + 32 * v));
                    __m256i x = _mm256_loadu_si256((const __m256i *)(a0 + 32 * v));
                    s00 = _mm256_add_epi64(s00, _mm256_sad_epu8(x, y0));
                    s01 = _mm256_add_epi64(s01, _mm256_sad_epu8(x, y1));
                    x = _mm256_loadu_si256((const __m256i *)(a1 + 32 * v));
                    s10 = _mm256_add_epi64(s10, _mm256_sad_epu8(x, y0));
                    s11 = _mm256_add_epi64(s11, _mm256_sad_epu8(x, y1));
                    x = _mm256_loadu_si256((const __m256i *)(a2 + 32 * v));
                    s20 = _mm256_add_epi64(s20, _mm256_sad_epu8(x, y0));
                    s21 = _mm256_add_epi64(s21, _mm256_sad_epu8(x, y1));
                    x = _mm256_loadu_si256((const __m256i *)(a3 + 32 * v));
                    s30 = _mm256_add_epi64(s30, _mm256_sad_epu8(x, y0));
                    s31 = _mm256_add_epi64(s31, _mm256_sad_epu8(x, y1));
                }
                int32_t *o = out + i * n + j;
                o[0] = hsum256(s00); o[1] = hsum256(s01);
                o[n] = hsum256(s10); o[n + 1] = hsum256(s11);
                o[2 * n] = hsum256(s20); o[2 * n + 1] = hsum256(s21);
                o[3 * n] = hsum256(s30); o[3 * n + 1] = hsum256(s31);
            }
            for (; j < j1; j++) { /* odd last row of B */
                for (int r = 0; r < 4; r++) {
                    const uint8_t *a = A + (i + r) * d, *b = B + j * d;
                    __m256i s = _mm256_setzero_si256();
                    for (Py_ssize_t v = 0; v < nv; v++)
                        s = _mm256_add_epi64(s, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(a + 32 * v)),
                                                                _mm256_loadu_si256((const __m256i *)(b + 32 * v))));
                    out[(i + r) * n + j] = hsum256(s);
                }
            }
        }
        for (; i < m; i++) { /* last rows of A */
            const uint8_t *a = A + i * d;
            for (Py_ssize_t j = j0; j < j1; j++) {
                const uint8_t *b = B + j * d;
                __m256i s = _mm256_setzero_si256();
                for (Py_ssize_t v = 0; v < nv; v++)
                    s = _mm256_add_epi64(s, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(a + 32 * v)),
                                                            _mm256_loadu_si256((const __m256i *)(b + 32 * v))));
                out[i * n + j] = hsum256(s);
            }
        }
    }
}

/* The 16 sums of a 4 x 4 tile at once: each accumulator's 8 lanes added up and stored as int32 (a row's
 * distance is below 2^31, so two sums share a 64-bit lane without carrying into each other). Pairs of
 * accumulators packed into one vector, then 8 vectors folded into one by a tree of unpacks and 128-bit
 * shuffles: 37 instructions where 16 horizontal sums took about 120, a quarter of the tile's work at 784 bytes. */
__attribute__((target("avx512f,avx512bw"))) static inline void store4x4(__m512i s[4][4], int32_t *out,
                                                                        Py_ssize_t n) {
    __m512i v[8], w[4];
    for (int r = 0; r < 4; r++)
        for (int h = 0; h < 2; h++) v[2 * r + h] = _mm512_add_epi64(s[r][2 * h], _mm512_slli_epi64(s[r][2 * h + 1], 32));
    for (int k = 0; k < 4; k++) /* each 128-bit lane: [part of v[2k], part of v[2k + 1]] */
        w[k] = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2 * k], v[2 * k + 1]),
                                _mm512_unpackhi_epi64(v[2 * k], v[2 * k + 1]));
    __m512i x0 = _mm512_add_epi64(_mm512_shuffle_i64x2(w[0], w[1], 0x88), _mm512_shuffle_i64x2(w[0], w[1], 0xdd));
    __m512i x1 = _mm512_add_epi64(_mm512_shuffle_i64x2(w[2], w[3], 0x88), _mm512_shuffle_i64x2(w[2], w[3], 0xdd));
    /* lane k of y: the sum of v[k], that is out[k / 2][2 (k % 2)] below and out[k / 2][2 (k % 2) + 1] above */
    __m512i y = _mm512_add_epi64(_mm512_shuffle_i64x2(x0, x1, 0x88), _mm512_shuffle_i64x2(x0, x1, 0xdd));
    _mm_storeu_si128((__m128i *)out, _mm512_extracti32x4_epi32(y, 0));
    _mm_storeu_si128((__m128i *)(out + n), _mm512_extracti32x4_epi32(y, 1));
    _mm_storeu_si128((__m128i *)(out + 2 * n), _mm512_extracti32x4_epi32(y, 2));
    _mm_storeu_si128((__m128i *)(out + 3 * n), _mm512_extracti32x4_epi32(y, 3));
}

__attribute__((target("avx512f,avx512bw"))) static void l1_avx512(const uint8_t *A, const uint8_t *B,
                                                                  int32_t *out, Py_ssize_t m, Py_ssize_t n,
                                                                  Py_ssize_t d) {
    const Py_ssize_t nv = d / 64;
    for (Py_ssize_t j0 = 0; j0 < n; j0 += JB) {
        const Py_ssize_t j1 = j0 + JB < n ? j0 + JB : n;
        Py_ssize_t i = 0;
        for (; i + 4 <= m; i += 4) { /* 4 rows of A x 4 rows of B: 16 accumulators */
            const uint8_t *a0 = A + i * d;
            Py_ssize_t j = j0;
            for (; j + 4 <= j1; j += 4) {
                const uint8_t *b0 = B + j * d;
                __m512i s[4][4];
                for (int r = 0; r < 4; r++)
                    for (int c = 0; c < 4; c++) s[r][c] = _mm512_setzero_si512();
                for (Py_ssize_t v = 0; v < nv; v++) {
                    __m512i y[4];
                    for (int c = 0; c < 4; c++) y[c] = _mm512_loadu_si512((const void *)(b0 + c * d + 64 * v));
                    for (int r = 0; r < 4; r++) {
                        __m512i x = _mm512_loadu_si512((const void *)(a0 + r * d + 64 * v));
                        for (int c = 0; c < 4; c++) s[r][c] = _mm512_add_epi64(s[r][c], _mm512_sad_epu8(x, y[c]));
                    }
                }
                store4x4(s, out + i * n + j, n);
            }
            for (; j < j1; j++) {
                for (int r = 0; r < 4; r++) {
                    const uint8_t *a = a0 + r * d, *b = B + j * d;
                    __m512i s = _mm512_setzero_si512();
                    for (Py_ssize_t v = 0; v < nv; v++)
                        s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_loadu_si512((const void *)(a + 64 * v)),
                                                                _mm512_loadu_si512((const void *)(b + 64 * v))));
                    out[(i + r) * n + j] = (int32_t)_mm512_reduce_add_epi64(s);
                }
            }
        }
        for (; i < m; i++) {
            const uint8_t *a = A + i * d;
            for (Py_ssize_t j = j0; j < j1; j++) {
                const uint8_t *b = B + j * d;
                __m512i s = _mm512_setzero_si512();
                for (Py_ssize_t v = 0; v < nv; v++)
                    s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_loadu_si512((const void *)(a + 64 * v)),
                                                            _mm512_loadu_si512((const void *)(b + 64 * v))));
                out[i * n + j] = (int32_t)_mm512_reduce_add_epi64(s);
            }
        }
    }
}
#endif

/* ---- squared L2 of a few query rows: |a - b| as bytes, widened to 16 bits, squared and paired by vpmaddwd */

static void ssd_portable(const uint8_t *A, const uint8_t *B, int32_t *out, Py_ssize_t m, Py_ssize_t n,
                         Py_ssize_t d) {
    for (Py_ssize_t i = 0; i < m; i++) {
        const uint8_t *a = A + i * d;
        for (Py_ssize_t j = 0; j < n; j++) {
            const uint8_t *b = B + j * d;
            int32_t s = 0;
            for (Py_ssize_t t = 0; t < d; t++) s += (a[t] - b[t]) * (a[t] - b[t]);
            out[i * n + j] = s;
        }
    }
}

#ifdef AEKNN_X86
__attribute__((target("avx2"))) static void ssd_avx2(const uint8_t *A, const uint8_t *B, int32_t *out,
                                                     Py_ssize_t m, Py_ssize_t n, Py_ssize_t d) {
    const Py_ssize_t nv = d / 32;
    const __m256i zero = _mm256_setzero_si256();
    for (Py_ssize_t i = 0; i < m; i++) {
        const uint8_t *a = A + i * d;
        for (Py_ssize_t j = 0; j < n; j++) {
            const uint8_t *b = B + j * d;
            __m256i s = zero;
            for (Py_ssize_t v = 0; v < nv; v++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(a + 32 * v));
                __m256i y = _mm256_loadu_si256((const __m256i *)(b + 32 * v));
                __m256i diff = _mm256_or_si256(_mm256_subs_epu8(x, y), _mm256_subs_epu8(y, x));
                __m256i lo = _mm256_unpacklo_epi8(diff, zero), hi = _mm256_unpackhi_epi8(diff, zero);
                s = _mm256_add_epi32(s, _mm256_add_epi32(_mm256_madd_epi16(lo, lo), _mm256_madd_epi16(hi, hi)));
            }
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
            t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 1));
            out[i * n + j] = _mm_cvtsi128_si32(t);
        }
    }
}
#endif

/* ---- sparse rows (most pixels 0, as in MNIST): each query row's nonzero pixel pairs against every point
 *
 * The points are stored in chunks of JS, pixel pair by pixel pair (cols: (ceil(N / JS), P, JS), the chunk's
 * points side by side for each pair, zeros after the last point), so a query row costs its nonzero pairs
 * (MNIST: 88 of 359) times the points, where a dense product costs every pair, and a chunk is one run of memory.
 *   dot_sparse(q, cols, out, P, c0, c1)   q (m, P) and cols uint32, each two int16 byte values (0..255):
 *       out (m, c1 - c0) int32 = the dot products of q's rows with points c0..c1 (vpmaddwd: exact)
 *   min_sparse(q, cols, qnorm, cnorm, out, P, c0, c1)   q (m, P) and cols uint16, each two bytes; qnorm (m,) and
 *       cnorm (ceil(N / JS) * JS,) int32 the rows' byte sums: out = the L1 distances |a| + |b| - 2 sum min(a, b),
 *       as |a - b| = a + b - 2 min(a, b) and min(a, b) = 0 wherever a = 0 */

/* points a chunk: their pairs (46 KB for MNIST's L2, 23 KB for L1) stay in cache while every row passes. On a
 * Zen 3, one core, MNIST: 32 points took 408 to 454 us a row (L2) and 279 to 293 (L1); 16, 64 and 128 took 468 to
 * 721 and 367 to 564 (docs/benchmarks.md, Rank measures) */
#define JS 32

typedef struct {
    int32_t p;  /* a nonzero pair of the row */
    uint32_t v; /* its two values */
} nz_t;

/* each row's nonzero pairs, one list after the other: row i's are lst[at[i]..at[i + 1]) */
static void nonzero_pairs(const uint8_t *q, Py_ssize_t item, Py_ssize_t m, Py_ssize_t P, nz_t *lst, int64_t *at) {
    int64_t k = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        at[i] = k;
        for (Py_ssize_t p = 0; p < P; p++) {
            uint32_t v = item == 4 ? ((const uint32_t *)q)[i * P + p] : ((const uint16_t *)q)[i * P + p];
            if (v) lst[k].p = (int32_t)p, lst[k].v = v, k++;
        }
    }
    at[m] = k;
}

static inline int32_t dot_pair(uint32_t a, uint32_t b) {
    return (int32_t)(a & 0xffff) * (int32_t)(b & 0xffff) + (int32_t)(a >> 16) * (int32_t)(b >> 16);
}

static inline int32_t min_pair(uint32_t a, uint32_t b) {
    uint32_t a0 = a & 0xff, a1 = a >> 8, b0 = b & 0xff, b1 = b >> 8;
    return (int32_t)((a0 < b0 ? a0 : b0) + (a1 < b1 ? a1 : b1));
}

/* a chunk's JS values for row i (l1: |a| + |b| - 2 sum min), portably */
static void chunk_portable(const nz_t *z, int32_t count, const void *chunk, int l1, int32_t qn, const int32_t *cn,
                           int32_t *v) {
    for (int j = 0; j < JS; j++) {
        int32_t s = 0;
        for (int32_t k = 0; k < count; k++)
            s += l1 ? min_pair(z[k].v, ((const uint16_t *)chunk)[z[k].p * JS + j])
                    : dot_pair(z[k].v, ((const uint32_t *)chunk)[z[k].p * JS + j]);
        v[j] = l1 ? qn + cn[j] - 2 * s : s;
    }
}

#ifdef AEKNN_X86
__attribute__((target("avx2"))) static void dot_chunk_avx2(const nz_t *z, int32_t count, const uint32_t *chunk,
                                                          int32_t *v) {
    __m256i a[JS / 8];
    for (int s = 0; s < JS / 8; s++) a[s] = _mm256_setzero_si256();
    for (int32_t k = 0; k < count; k++) {
        const __m256i b = _mm256_set1_epi32((int32_t)z[k].v);
        const uint32_t *c = chunk + (Py_ssize_t)z[k].p * JS;
        for (int s = 0; s < JS / 8; s++)
            a[s] = _mm256_add_epi32(a[s], _mm256_madd_epi16(b, _mm256_loadu_si256((const __m256i *)(c + 8 * s))));
    }
    for (int s = 0; s < JS / 8; s++) _mm256_storeu_si256((__m256i *)(v + 8 * s), a[s]);
}

/* 128 pairs' mins at most in a 16-bit lane: 128 * 510 < 2^16 */
#define MIN_GROUP 128

__attribute__((target("avx2"))) static void min_chunk_avx2(const nz_t *z, int32_t count, const uint16_t *chunk,
                                                          int32_t qn, const int32_t *cn, int32_t *v) {
    const __m256i ones = _mm256_set1_epi8(1);
    __m256i a[JS / 8];
    for (int s = 0; s < JS / 8; s++) a[s] = _mm256_setzero_si256();
    for (int32_t k0 = 0; k0 < count; k0 += MIN_GROUP) {
        const int32_t k1 = k0 + MIN_GROUP < count ? k0 + MIN_GROUP : count;
        __m256i h[JS / 16]; /* 16 points each: a point's two mins added by vpmaddubsw (at most 510) */
        for (int s = 0; s < JS / 16; s++) h[s] = _mm256_setzero_si256();
        for (int32_t k = k0; k < k1; k++) {
            const __m256i b = _mm256_set1_epi16((short)z[k].v);
            const uint16_t *c = chunk + (Py_ssize_t)z[k].p * JS;
            for (int s = 0; s < JS / 16; s++)
                h[s] = _mm256_add_epi16(
                    h[s], _mm256_maddubs_epi16(_mm256_min_epu8(b, _mm256_loadu_si256((const __m256i *)(c + 16 * s))), ones));
        }
        for (int s = 0; s < JS / 16; s++) {
            a[2 * s] = _mm256_add_epi32(a[2 * s], _mm256_cvtepu16_epi32(_mm256_castsi256_si128(h[s])));
            a[2 * s + 1] = _mm256_add_epi32(a[2 * s + 1], _mm256_cvtepu16_epi32(_mm256_extracti128_si256(h[s], 1)));
        }
    }
    const __m256i q = _mm256_set1_epi32(qn);
    for (int s = 0; s < JS / 8; s++) {
        __m256i d = _mm256_add_epi32(q, _mm256_loadu_si256((const __m256i *)(cn + 8 * s)));
        _mm256_storeu_si256((__m256i *)(v + 8 * s), _mm256_sub_epi32(d, _mm256_add_epi32(a[s], a[s])));
    }
}
#endif

/* chunk by chunk, every row against each: the chunk stays in cache while the rows pass */
static void sparse_rows(const nz_t *lst, const int64_t *at, const uint8_t *C, int l1, int vec, const int32_t *qn,
                        const int32_t *cn, int32_t *out, Py_ssize_t m, Py_ssize_t P, Py_ssize_t c0, Py_ssize_t c1) {
    const Py_ssize_t w = c1 - c0, item = l1 ? 2 : 4;
    int32_t v[JS];
    for (Py_ssize_t b = c0 / JS; b * JS < c1; b++) {
        const uint8_t *chunk = C + b * P * JS * item;
        const Py_ssize_t lo = b * JS > c0 ? b * JS : c0, hi = (b + 1) * JS < c1 ? (b + 1) * JS : c1;
        for (Py_ssize_t i = 0; i < m; i++) {
            const nz_t *z = lst + at[i];
            const int32_t count = (int32_t)(at[i + 1] - at[i]), q = l1 ? qn[i] : 0;
            const int32_t *cb = l1 ? cn + b * JS : NULL;
#ifdef AEKNN_X86
            if (vec && l1) min_chunk_avx2(z, count, (const uint16_t *)chunk, q, cb, v);
            else if (vec) dot_chunk_avx2(z, count, (const uint32_t *)chunk, v);
            else
#endif
                chunk_portable(z, count, chunk, l1, q, cb, v);
            memcpy(out + i * w + (lo - c0), v + (lo - b * JS), sizeof(int32_t) * (hi - lo));
        }
    }
}

static PyObject *run_sparse(PyObject *args, int l1) {
    Py_buffer q, c, qn = {0}, cn = {0}, out;
    Py_ssize_t P, c0, c1;
    const char *isa = "best";
    int ok = l1 ? PyArg_ParseTuple(args, "y*y*y*y*w*nnn|s", &q, &c, &qn, &cn, &out, &P, &c0, &c1, &isa)
                : PyArg_ParseTuple(args, "y*y*w*nnn|s", &q, &c, &out, &P, &c0, &c1, &isa);
    if (!ok) return NULL;
    PyObject *result = NULL;
    const Py_ssize_t item = l1 ? 2 : 4;
    Py_ssize_t m = P > 0 ? q.len / (item * P) : 0, nc = P > 0 ? c.len / (item * P * JS) : 0;
    nz_t *lst = NULL;
    int64_t *at = NULL;
    int vec = 0;
#ifdef AEKNN_X86
    __builtin_cpu_init();
    vec = __builtin_cpu_supports("avx2") && strcmp(isa, "portable") != 0;
#endif
    if (strcmp(isa, "best") && strcmp(isa, "portable") && !(vec && !strcmp(isa, "avx2"))) {
        PyErr_Format(PyExc_ValueError, "instruction set %s is unknown or not supported by this CPU", isa);
        goto done;
    }
    if (P <= 0 || P > (l1 ? INT32_MAX / 510 : INT32_MAX / 130050) || q.len != m * P * item ||
        c.len != nc * P * JS * item || c0 < 0 || c1 < c0 || c1 > nc * JS || out.len != m * (c1 - c0) * 4 ||
        (l1 && (qn.len != m * 4 || cn.len != nc * JS * 4))) {
        PyErr_Format(PyExc_ValueError,
                     "%s: q must be (m, P) pairs and cols (chunks, P, %d), 0 <= c0 <= c1 <= chunks * %d, out (m, c1 - "
                     "c0) int32%s, P at most %d",
                     l1 ? "min_sparse" : "dot_sparse", JS, JS, l1 ? ", qnorm (m,) and cnorm (chunks * 32,) int32" : "",
                     (int)(l1 ? INT32_MAX / 510 : INT32_MAX / 130050));
        goto done;
    }
    lst = malloc(sizeof(nz_t) * (m * P + 1));
    at = malloc(sizeof(int64_t) * (m + 1));
    if (!lst || !at) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    nonzero_pairs(q.buf, item, m, P, lst, at);
    sparse_rows(lst, at, c.buf, l1, vec, qn.buf, cn.buf, out.buf, m, P, c0, c1);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(lst), free(at);
    PyBuffer_Release(&q), PyBuffer_Release(&c), PyBuffer_Release(&out);
    if (qn.obj) PyBuffer_Release(&qn);
    if (cn.obj) PyBuffer_Release(&cn);
    return result;
}

static PyObject *py_dot_sparse(PyObject *self, PyObject *args) { return run_sparse(args, 0); }

static PyObject *py_min_sparse(PyObject *self, PyObject *args) { return run_sparse(args, 1); }

static kernel_fn ssd_named(const char *name, const char **chosen) {
    int best = !strcmp(name, "best");
#ifdef AEKNN_X86
    __builtin_cpu_init();
    if ((best || !strcmp(name, "avx512") || !strcmp(name, "avx2")) && __builtin_cpu_supports("avx2")) {
        *chosen = "avx2";
        return ssd_avx2;
    }
#endif
    if (best || !strcmp(name, "portable")) {
        *chosen = "portable";
        return ssd_portable;
    }
    return NULL;
}

/* The kernel for an instruction-set name, or NULL when the name is unknown or this CPU lacks it. */
static kernel_fn kernel_named(const char *name, const char **chosen) {
    int best = !strcmp(name, "best");
#ifdef AEKNN_X86
    __builtin_cpu_init();
    if ((best || !strcmp(name, "avx512")) && __builtin_cpu_supports("avx512bw")) {
        *chosen = "avx512";
        return l1_avx512;
    }
    if ((best || !strcmp(name, "avx2")) && __builtin_cpu_supports("avx2")) {
        *chosen = "avx2";
        return l1_avx2;
    }
#endif
    if (best || !strcmp(name, "portable")) {
        *chosen = "portable";
        return l1_portable;
    }
    return NULL;
}

static PyObject *run_block(PyObject *args, kernel_fn (*named)(const char *, const char **)) {
    Py_buffer a, b, out;
    Py_ssize_t d;
    const char *isa = "best", *chosen = NULL;
    if (!PyArg_ParseTuple(args, "y*y*w*n|s", &a, &b, &out, &d, &isa)) return NULL;
    PyObject *result = NULL;
    kernel_fn kernel = named(isa, &chosen);
    if (kernel == NULL) {
        PyErr_Format(PyExc_ValueError, "instruction set %s is unknown or not supported by this CPU", isa);
        goto done;
    }
    if (d <= 0 || d % 64 != 0 || a.len % d != 0 || b.len % d != 0) {
        PyErr_SetString(PyExc_ValueError, "row length d must be a positive multiple of 64 dividing both inputs");
        goto done;
    }
    if (named == kernel_named && d > INT32_MAX / 255) { /* an L1 sum fits int32, and two share a 64-bit lane
                                                          (store4x4) without carrying; zero padding adds nothing */
        PyErr_Format(PyExc_ValueError, "row length d must be at most %d bytes: a distance must fit int32",
                     INT32_MAX / 255);
        goto done;
    }
    Py_ssize_t m = a.len / d, n = b.len / d;
    if (out.len != m * n * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "out must hold m x n int32");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    kernel((const uint8_t *)a.buf, (const uint8_t *)b.buf, (int32_t *)out.buf, m, n, d);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_l1_block(PyObject *self, PyObject *args) { return run_block(args, kernel_named); }

static PyObject *py_ssd_block(PyObject *self, PyObject *args) { return run_block(args, ssd_named); }

static PyObject *py_isa(PyObject *self, PyObject *unused) {
    const char *chosen = "portable";
    kernel_named("best", &chosen);
    return PyUnicode_FromString(chosen);
}

static PyObject *py_supported(PyObject *self, PyObject *unused) {
    const char *names[] = {"avx512", "avx2", "portable"}, *chosen;
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < 3; i++)
        if (kernel_named(names[i], &chosen) != NULL && PyList_Append(out, PyUnicode_FromString(names[i])) < 0)
            Py_CLEAR(out);
    if (out == NULL) return NULL;
    PyObject *t = PyList_AsTuple(out);
    Py_DECREF(out);
    return t;
}

static PyMethodDef methods[] = {
    {"l1_block", py_l1_block, METH_VARARGS,
     "l1_block(a, b, out, d, isa='best'): out[i, j] = sum |a[i] - b[j]| (exact int32)"},
    {"ssd_block", py_ssd_block, METH_VARARGS,
     "ssd_block(a, b, out, d, isa='best'): out[i, j] = sum (a[i] - b[j])^2 (exact int32), for a few rows of a"},
    {"dot_sparse", py_dot_sparse, METH_VARARGS,
     "dot_sparse(q, cols, out, P, c0, c1, isa='best'): exact dot products of rows of byte pairs, nonzero pairs only"},
    {"min_sparse", py_min_sparse, METH_VARARGS,
     "min_sparse(q, cols, qnorm, cnorm, out, P, c0, c1, isa='best'): exact L1 distances of rows of byte pairs"},
    {"isa", py_isa, METH_NOARGS, "the widest instruction set this CPU runs"},
    {"supported", py_supported, METH_NOARGS, "the instruction sets this CPU runs, widest first"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_l1", NULL, -1, methods};

PyMODINIT_FUNC PyInit__l1(void) {
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL && PyModule_AddIntConstant(mod, "SPARSE_CHUNK", JS) < 0) Py_CLEAR(mod);
    return mod;
}
