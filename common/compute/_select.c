/* Exact top-k selection over integer scores, fused with the score itself.
 *
 * A score is base[j] + a * g[i, j] for a block g of integer values (int32, or float32 holding exact
 * integers, as a float32 GEMM of small integers gives). Pixel L2 uses base = |x_j|^2 and a = -2 over
 * dot products g (so score + |x_i|^2 is the exact squared distance); pixel L1 uses base = 0 and a = 1
 * over the SAD sums. Candidates are kept as one packed 64-bit key (score, id), so the order is total:
 * the k kept are THE k smallest pairs, ties broken by the lower id, with no approximation, no proof
 * and no fallback.
 *
 * The running state of each row lives in caller-owned arrays, so that one block of the distance
 * matrix can feed two row sets (the symmetric sweep) and rows can be finished long after they start:
 *   buf (R, cap) int64   the row's kept keys (unordered)
 *   cnt (R,) int64       how many are kept
 *   thr (R,) int64       keys at or above this can no longer be among the k smallest (INT64_MAX at first)
 *   lim (R,) int32       the score part of thr: a cheap vector prefilter
 * When a row's buffer fills, a quickselect shrinks it to its k smallest and tightens thr.
 *
 *   update_rows(g, g_off, ldg, f32, b, m, col0, base, a, rows, srow, k, buf, cnt, thr, lim)
 *       block row i (query id rows[i], state row srow[i]) against columns col0..col0+m
 *   update_cols(g, g_off, ldg, f32, b, m, col0, base, a, rows, soff, jb, je, k, buf, cnt, thr, lim)
 *       the same block read down its columns: column j (id col0+j, state row col0+j-soff), j in jb..je,
 *       gets one candidate per block row: id rows[i], score base[rows[i]] + a * g[i, j]
 *   finish(srow, k, buf, cnt, out_vals, out_ids)       the k kept of each state row, nearest first
 *   smallest(g, base, a, rows, n, k, out_vals, out_ids) one block of whole rows, start to finish
 * g is read from element g_off with a row stride of ldg elements. The GIL is released throughout;
 * callers split rows (update_rows) or columns (update_cols) between threads. update_cols runs its
 * AVX2 body (cols_*_avx2, intrinsics) where the CPU has AVX2: the compiler vectorises the rows' test only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

static inline int64_t pack(int32_t score, int64_t j) { return (int64_t)score * 4294967296LL + j; }
static inline int32_t score_of(int64_t key) { return (int32_t)((key - (key & 0xffffffffLL)) / 4294967296LL); }

static void swap64(int64_t *x, int64_t *y) {
    int64_t t = *x;
    *x = *y;
    *y = t;
}

/* Reorder keys[0..cnt) so that its k smallest come first (any order). */
static void quickselect(int64_t *keys, Py_ssize_t cnt, Py_ssize_t k) {
    Py_ssize_t lo = 0, hi = cnt - 1;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2; /* median of three as the pivot */
        if (keys[mid] < keys[lo]) swap64(&keys[mid], &keys[lo]);
        if (keys[hi] < keys[lo]) swap64(&keys[hi], &keys[lo]);
        if (keys[hi] < keys[mid]) swap64(&keys[hi], &keys[mid]);
        int64_t pivot = keys[mid];
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (keys[i] < pivot) i++;
            while (keys[j] > pivot) j--;
            if (i <= j) {
                swap64(&keys[i], &keys[j]);
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else return;
    }
}

static int cmp64(const void *x, const void *y) {
    int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
    return (a > b) - (a < b);
}

static int64_t max_of(const int64_t *keys, Py_ssize_t cnt) {
    int64_t m = keys[0];
    for (Py_ssize_t i = 1; i < cnt; i++) m = keys[i] > m ? keys[i] : m;
    return m;
}

typedef struct {
    int64_t *buf, *cnt, *thr;
    int32_t *lim;
    Py_ssize_t cap, k;
} state_t;

/* Add a key below the row's threshold; when its buffer is full, keep its k smallest and tighten. */
static inline void keep(state_t *st, Py_ssize_t r, int64_t key) {
    int64_t *b = st->buf + r * st->cap;
    Py_ssize_t c = (Py_ssize_t)st->cnt[r];
    b[c++] = key;
    if (c == st->cap) {
        quickselect(b, c, st->k);
        c = st->k;
        st->thr[r] = max_of(b, st->k);
        st->lim[r] = score_of(st->thr[r]);
    }
    st->cnt[r] = c;
}

/* Offer row r the candidate (score, id): kept when its key is below the row's threshold. */
static inline void offer(state_t *st, Py_ssize_t r, int32_t score, int64_t id) {
    int64_t key = pack(score, id);
    if (key < st->thr[r]) keep(st, r, key);
}

/* One body per element type: int32 blocks (int8 GEMM, SAD sums) and float32 blocks holding exact
 * integers (float32 GEMM), converted on the fly. The 16-wide loops are what the compiler vectorises. */
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
/* one build for every x86 CPU: the loader picks the widest clone the CPU runs */
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

#define DEFINE_BODIES(SUFFIX, T)                                                                              \
    CLONES static void rows_##SUFFIX(const T *G, Py_ssize_t ldg, Py_ssize_t b, Py_ssize_t m, Py_ssize_t col0,  \
                                     const int32_t *base, int32_t a, const int64_t *rows, const int64_t *srow,   \
                                     state_t *st) {                                                           \
        for (Py_ssize_t i = 0; i < b; i++) {                                                                   \
            const T *g = G + i * ldg;                                                                          \
            const int32_t *bs = base + col0;                                                                   \
            const int64_t self = rows[i] - col0;                                                               \
            const Py_ssize_t r = (Py_ssize_t)srow[i];                                                          \
            Py_ssize_t j0 = 0;                                                                                 \
            for (; j0 + 16 <= m; j0 += 16) {                                                                   \
                int32_t s[16];                                                                                 \
                int32_t mn = INT32_MAX;                                                                        \
                for (int t = 0; t < 16; t++) {                                                                 \
                    s[t] = bs[j0 + t] + a * (int32_t)g[j0 + t];                                                \
                    mn = s[t] < mn ? s[t] : mn;                                                                \
                }                                                                                              \
                if (mn > st->lim[r]) continue;                                                                 \
                for (int t = 0; t < 16; t++) {                                                                 \
                    if (s[t] > st->lim[r] || j0 + t == self) continue;                                         \
                    offer(st, r, s[t], col0 + j0 + t);                                                         \
                }                                                                                              \
            }                                                                                                  \
            for (; j0 < m; j0++) { /* the tail */                                                              \
                if (j0 == self) continue;                                                                      \
                offer(st, r, bs[j0] + a * (int32_t)g[j0], col0 + j0);                                          \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
    CLONES static void cols_##SUFFIX(const T *G, Py_ssize_t ldg, Py_ssize_t b, Py_ssize_t col0,                \
                                     const int32_t *base, int32_t a, const int64_t *rows, Py_ssize_t soff,       \
                                     Py_ssize_t jb, Py_ssize_t je, state_t *st) {                             \
        const Py_ssize_t r0 = col0 - soff; /* state row of column 0 */                                        \
        for (Py_ssize_t i = 0; i < b; i++) {                                                                   \
            const T *g = G + i * ldg;                                                                          \
            const int32_t bi = base[rows[i]];                                                                  \
            const int32_t *lim = st->lim + r0;                                                                 \
            Py_ssize_t j0 = jb;                                                                                \
            for (; j0 + 16 <= je; j0 += 16) {                                                                  \
                int hit = 0;                                                                                   \
                for (int t = 0; t < 16; t++) hit |= (bi + a * (int32_t)g[j0 + t]) <= lim[j0 + t];              \
                if (!hit) continue;                                                                            \
                for (int t = 0; t < 16; t++) {                                                                 \
                    const Py_ssize_t j = j0 + t;                                                               \
                    const int32_t s = bi + a * (int32_t)g[j];                                                  \
                    if (s > lim[j] || col0 + j == rows[i]) continue;                                           \
                    offer(st, r0 + j, s, rows[i]);                                                             \
                }                                                                                              \
            }                                                                                                  \
            for (; j0 < je; j0++) {                                                                            \
                if (col0 + j0 == rows[i]) continue;                                                            \
                offer(st, r0 + j0, bi + a * (int32_t)g[j0], rows[i]);                                          \
            }                                                                                                  \
        }                                                                                                      \
    }

DEFINE_BODIES(i32, int32_t)
DEFINE_BODIES(f32, float)

/* The column pass with its 16-lane test in AVX2 intrinsics. GCC 12 vectorises the rows' test (a minimum
 * against one limit) but not the portable column test (each lane against its own column's limit), and that
 * test is most of the column pass's time. The same integers as the portable body: the float truncated to
 * int32 as C converts it, a * g and the sum in wrapping 32-bit arithmetic, a signed compare; then only the
 * lanes at or below their limit, in order. Used where the CPU has AVX2 (checked at run time). */
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_COLS_AVX2 1
#define LOAD_F32(p) _mm256_cvttps_epi32(_mm256_loadu_ps(p))
#define LOAD_I32(p) _mm256_loadu_si256((const __m256i *)(p))
#define DEFINE_COLS_AVX2(SUFFIX, T, LOAD)                                                                     \
    __attribute__((target("avx2"))) static void cols_##SUFFIX##_avx2(                                         \
        const T *G, Py_ssize_t ldg, Py_ssize_t b, Py_ssize_t col0, const int32_t *base, int32_t a,            \
        const int64_t *rows, Py_ssize_t soff, Py_ssize_t jb, Py_ssize_t je, state_t *st) {                    \
        const Py_ssize_t r0 = col0 - soff; /* state row of column 0 */                                        \
        const __m256i va = _mm256_set1_epi32(a);                                                               \
        for (Py_ssize_t i = 0; i < b; i++) {                                                                   \
            const T *g = G + i * ldg;                                                                          \
            const int32_t bi = base[rows[i]];                                                                  \
            const __m256i vb = _mm256_set1_epi32(bi);                                                          \
            const int32_t *lim = st->lim + r0;                                                                 \
            Py_ssize_t j0 = jb;                                                                                \
            for (; j0 + 16 <= je; j0 += 16) {                                                                  \
                const __m256i s0 = _mm256_add_epi32(vb, _mm256_mullo_epi32(va, LOAD(g + j0)));                 \
                const __m256i s1 = _mm256_add_epi32(vb, _mm256_mullo_epi32(va, LOAD(g + j0 + 8)));             \
                const __m256i over0 = _mm256_cmpgt_epi32(s0, _mm256_loadu_si256((const __m256i *)(lim + j0))); \
                const __m256i over1 =                                                                          \
                    _mm256_cmpgt_epi32(s1, _mm256_loadu_si256((const __m256i *)(lim + j0 + 8)));               \
                uint32_t lanes = ~((uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(over0)) |                  \
                                   ((uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(over1)) << 8)) &          \
                                 0xffffu;                                                                      \
                while (lanes) { /* each lane a column of its own: a keep changes no other lane's limit */      \
                    const Py_ssize_t j = j0 + __builtin_ctz(lanes);                                            \
                    lanes &= lanes - 1;                                                                        \
                    if (col0 + j == rows[i]) continue;                                                         \
                    offer(st, r0 + j, bi + a * (int32_t)g[j], rows[i]);                                        \
                }                                                                                              \
            }                                                                                                  \
            for (; j0 < je; j0++) { /* the tail */                                                             \
                if (col0 + j0 == rows[i]) continue;                                                            \
                offer(st, r0 + j0, bi + a * (int32_t)g[j0], rows[i]);                                          \
            }                                                                                                  \
        }                                                                                                      \
    }

DEFINE_COLS_AVX2(i32, int32_t, LOAD_I32)
DEFINE_COLS_AVX2(f32, float, LOAD_F32)
#endif

static void finish_rows(const int64_t *srow, Py_ssize_t b, state_t *st, int32_t *out_vals, int32_t *out_ids) {
    const Py_ssize_t k = st->k;
    for (Py_ssize_t i = 0; i < b; i++) {
        const Py_ssize_t r = (Py_ssize_t)srow[i];
        int64_t *buf = st->buf + r * st->cap;
        Py_ssize_t cnt = (Py_ssize_t)st->cnt[r];
        if (cnt > k) quickselect(buf, cnt, k);
        Py_ssize_t kept = cnt < k ? cnt : k;
        qsort(buf, (size_t)kept, sizeof(int64_t), cmp64);
        for (Py_ssize_t t = 0; t < k; t++) {
            if (t < kept) {
                int64_t j = buf[t] & 0xffffffffLL;
                out_ids[i * k + t] = (int32_t)j;
                out_vals[i * k + t] = score_of(buf[t]);
            } else { /* fewer than k candidates (k >= n): never asked for by the engine */
                out_ids[i * k + t] = -1;
                out_vals[i * k + t] = INT32_MAX;
            }
        }
    }
}

/* ---------------------------------------------------------------- argument checks */

#define I32(x) ((Py_ssize_t)sizeof(int32_t) * (x))
#define I64(x) ((Py_ssize_t)sizeof(int64_t) * (x))

static int fail(const char *msg) {
    PyErr_SetString(PyExc_ValueError, msg);
    return 0;
}

/* The state arrays: R rows of cap keys; cap > k. */
static int state_of(Py_buffer *buf, Py_buffer *cnt, Py_buffer *thr, Py_buffer *lim, Py_ssize_t k, state_t *st) {
    Py_ssize_t rows = cnt->len / I64(1);
    if (k <= 0 || rows <= 0 || cnt->len != I64(rows) || thr->len != I64(rows) || lim->len != I32(rows) ||
        buf->len % I64(rows) != 0)
        return fail("state: cnt, thr (int64) and lim (int32) must hold one value per row, buf (rows, cap) int64");
    st->cap = buf->len / I64(rows);
    if (st->cap <= k) return fail("state: buf must hold more than k keys per row");
    st->buf = buf->buf, st->cnt = cnt->buf, st->thr = thr->buf, st->lim = lim->buf, st->k = k;
    return 1;
}

/* g holds at least g_off + (b - 1) * ldg + m elements of 4 bytes. */
static int block_ok(Py_buffer *g, Py_ssize_t g_off, Py_ssize_t ldg, Py_ssize_t b, Py_ssize_t m) {
    if (b <= 0 || m < 0 || g_off < 0 || ldg < m || g->len % 4 != 0 || g_off + (b - 1) * ldg + m > g->len / 4)
        return fail("block: g is smaller than g_off + (b - 1) * ldg + m elements");
    return 1;
}

static int ids_ok(const int64_t *ids, Py_ssize_t cnt, Py_ssize_t lo, Py_ssize_t hi, const char *msg) {
    for (Py_ssize_t i = 0; i < cnt; i++)
        if (ids[i] < lo || ids[i] >= hi) return fail(msg);
    return 1;
}

static PyObject *py_update_rows(PyObject *self, PyObject *args) {
    Py_buffer g, base, rows, srow, buf, cnt, thr, lim;
    Py_ssize_t g_off, ldg, b, m, col0, k;
    int f32, a;
    if (!PyArg_ParseTuple(args, "y*nnpnnny*iy*y*nw*w*w*w*", &g, &g_off, &ldg, &f32, &b, &m, &col0, &base, &a, &rows,
                          &srow, &k, &buf, &cnt, &thr, &lim))
        return NULL;
    PyObject *result = NULL;
    state_t st;
    Py_ssize_t n = base.len / I32(1);
    if (!state_of(&buf, &cnt, &thr, &lim, k, &st) || !block_ok(&g, g_off, ldg, b, m)) goto done;
    if (rows.len != I64(b) || srow.len != I64(b) || col0 < 0 || col0 + m > n || n >= (Py_ssize_t)INT32_MAX) {
        fail("update_rows: rows and srow need b int64 ids, and columns col0..col0+m must lie in base");
        goto done;
    }
    if (!ids_ok(srow.buf, b, 0, cnt.len / I64(1), "update_rows: a state row is out of range")) goto done;
    Py_BEGIN_ALLOW_THREADS
    if (f32) rows_f32((const float *)g.buf + g_off, ldg, b, m, col0, base.buf, a, rows.buf, srow.buf, &st);
    else rows_i32((const int32_t *)g.buf + g_off, ldg, b, m, col0, base.buf, a, rows.buf, srow.buf, &st);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&g), PyBuffer_Release(&base), PyBuffer_Release(&rows), PyBuffer_Release(&srow);
    PyBuffer_Release(&buf), PyBuffer_Release(&cnt), PyBuffer_Release(&thr), PyBuffer_Release(&lim);
    return result;
}

static PyObject *py_update_cols(PyObject *self, PyObject *args) {
    Py_buffer g, base, rows, buf, cnt, thr, lim;
    Py_ssize_t g_off, ldg, b, m, col0, soff, jb, je, k;
    int f32, a;
    if (!PyArg_ParseTuple(args, "y*nnpnnny*iy*nnnnw*w*w*w*", &g, &g_off, &ldg, &f32, &b, &m, &col0, &base, &a,
                          &rows, &soff, &jb, &je, &k, &buf, &cnt, &thr, &lim))
        return NULL;
    PyObject *result = NULL;
    state_t st;
    Py_ssize_t n = base.len / I32(1);
    if (!state_of(&buf, &cnt, &thr, &lim, k, &st) || !block_ok(&g, g_off, ldg, b, m)) goto done;
    if (rows.len != I64(b) || !(0 <= jb && jb <= je && je <= m) || col0 < soff ||
        col0 + m - soff > cnt.len / I64(1) || col0 + m > n || n >= (Py_ssize_t)INT32_MAX) {
        fail("update_cols: rows needs b int64 ids, jb..je must lie in 0..m, and every column a state row");
        goto done;
    }
    if (!ids_ok(rows.buf, b, 0, n, "update_cols: a row id is out of range")) goto done;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_COLS_AVX2
    if (__builtin_cpu_supports("avx2")) {
        if (f32) cols_f32_avx2((const float *)g.buf + g_off, ldg, b, col0, base.buf, a, rows.buf, soff, jb, je, &st);
        else cols_i32_avx2((const int32_t *)g.buf + g_off, ldg, b, col0, base.buf, a, rows.buf, soff, jb, je, &st);
    } else
#endif
    if (f32) cols_f32((const float *)g.buf + g_off, ldg, b, col0, base.buf, a, rows.buf, soff, jb, je, &st);
    else cols_i32((const int32_t *)g.buf + g_off, ldg, b, col0, base.buf, a, rows.buf, soff, jb, je, &st);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&g), PyBuffer_Release(&base), PyBuffer_Release(&rows);
    PyBuffer_Release(&buf), PyBuffer_Release(&cnt), PyBuffer_Release(&thr), PyBuffer_Release(&lim);
    return result;
}

static PyObject *py_finish(PyObject *self, PyObject *args) {
    Py_buffer srow, buf, cnt, thr, lim, vals, ids;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "y*nw*y*y*y*w*w*", &srow, &k, &buf, &cnt, &thr, &lim, &vals, &ids)) return NULL;
    PyObject *result = NULL;
    state_t st;
    Py_ssize_t b = srow.len / I64(1);
    if (!state_of(&buf, &cnt, &thr, &lim, k, &st)) goto done;
    if (vals.len != I32(b * k) || ids.len != I32(b * k)) {
        fail("finish: out_vals and out_ids must hold (len(srow), k) int32");
        goto done;
    }
    if (!ids_ok(srow.buf, b, 0, cnt.len / I64(1), "finish: a state row is out of range")) goto done;
    Py_BEGIN_ALLOW_THREADS
    finish_rows(srow.buf, b, &st, vals.buf, ids.buf);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&srow), PyBuffer_Release(&buf), PyBuffer_Release(&cnt), PyBuffer_Release(&thr);
    PyBuffer_Release(&lim), PyBuffer_Release(&vals), PyBuffer_Release(&ids);
    return result;
}

/* One int32 block of whole rows, start to finish, with a state of its own (tests, small callers). */
static PyObject *py_smallest(PyObject *self, PyObject *args) {
    Py_buffer g, base, rows, vals, ids;
    int a;
    Py_ssize_t n, k;
    if (!PyArg_ParseTuple(args, "y*y*iy*nnw*w*", &g, &base, &a, &rows, &n, &k, &vals, &ids)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t b = rows.len / I64(1);
    if (n <= 0 || k <= 0 || b <= 0 || g.len != I32(b * n) || base.len != I32(n) || vals.len != I32(b * k) ||
        ids.len != I32(b * k) || n >= (Py_ssize_t)INT32_MAX) {
        fail("smallest: buffer sizes do not match (b, n) and (b, k)");
        goto done;
    }
    state_t st = {.cap = 2 * k + 64, .k = k};
    st.buf = malloc((size_t)I64(b * st.cap));
    st.cnt = calloc((size_t)b, sizeof(int64_t));
    st.thr = malloc((size_t)I64(b));
    st.lim = malloc((size_t)I32(b));
    int64_t *srow = malloc((size_t)I64(b));
    if (!st.buf || !st.cnt || !st.thr || !st.lim || !srow) {
        PyErr_NoMemory();
    } else {
        for (Py_ssize_t i = 0; i < b; i++) st.thr[i] = INT64_MAX, st.lim[i] = INT32_MAX, srow[i] = i;
        Py_BEGIN_ALLOW_THREADS
        rows_i32(g.buf, n, b, n, 0, base.buf, a, rows.buf, srow, &st);
        finish_rows(srow, b, &st, vals.buf, ids.buf);
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    }
    free(st.buf), free(st.cnt), free(st.thr), free(st.lim), free(srow);
done:
    PyBuffer_Release(&g), PyBuffer_Release(&base), PyBuffer_Release(&rows), PyBuffer_Release(&vals);
    PyBuffer_Release(&ids);
    return result;
}

static PyMethodDef methods[] = {
    {"update_rows", py_update_rows, METH_VARARGS,
     "update_rows(g, g_off, ldg, f32, b, m, col0, base, a, rows, srow, k, buf, cnt, thr, lim)"},
    {"update_cols", py_update_cols, METH_VARARGS,
     "update_cols(g, g_off, ldg, f32, b, m, col0, base, a, rows, soff, jb, je, k, buf, cnt, thr, lim)"},
    {"finish", py_finish, METH_VARARGS, "finish(srow, k, buf, cnt, thr, lim, out_vals, out_ids)"},
    {"smallest", py_smallest, METH_VARARGS,
     "smallest(g, base, a, rows, n, k, out_vals, out_ids): per row, the k smallest base[j] + a*g[i, j] by (score, j)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_select", NULL, -1, methods};

PyMODINIT_FUNC PyInit__select(void) { return PyModule_Create(&module); }
