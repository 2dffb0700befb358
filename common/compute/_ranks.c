/* Exact ranks beyond the stored top K: for query row i and a list of ids j, the rank of each j among the
 * N - 1 other samples ordered by (distance from i, id), 1 = nearest (STUDY.md, metrics item 6).
 *
 * A row's asked ids are its thresholds: their values are sorted by (value, id), every other sample l of
 * the row is placed among them by one binary search (pos = how many thresholds are at or below
 * (value_l, l)), a histogram of the positions is summed, and rank(j) = 1 + the samples strictly below
 * (value_j, j). Far samples (above every threshold) cost one comparison. No rounding: the values are
 *   block(g, kind, base, a, rows, q, out)   a block of whole rows: value = base[l] + a * g[r, l] with g
 *       int32 (kind 0) or float32 holding exact integers (kind 1), as the pixel paths score; or g float64
 *       values as they are (kind 2, base and a unused)
 *   coords(x, l1, rows, q, out)   float codes (N, m) float64: value = sum over coordinates in order of
 *       |x_i - x_l| or (x_i - x_l)^2, one rounding per operation, as common/compute/neighbors.py's float64
 *       formula computes it (this file is built with -ffp-contract=off: no fused multiply-add)
 * rows (b,) int64 are the query ids, q (b, T) int32 the ids asked per row, out (b, T) int64 their ranks.
 * The GIL is released; callers split rows between threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    double v;
    int32_t id;
    int32_t at; /* where it was asked (its column in q) */
} thr_t;

static int by_key(const void *pa, const void *pb) {
    const thr_t *a = pa, *b = pb;
    if (a->v != b->v) return a->v < b->v ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

typedef struct {
    thr_t *t;
    double *tv;
    int32_t *ti;
    int64_t *hist;
    int32_t *first; /* (nb + 1,) per bucket: the first threshold in it or after it */
    Py_ssize_t nb;  /* buckets: 8 per threshold, at least 64 */
} scratch_t;

static int scratch_of(scratch_t *s, Py_ssize_t T) {
    s->t = malloc(sizeof(thr_t) * (T + 1));
    s->tv = malloc(sizeof(double) * (T + 1));
    s->ti = malloc(sizeof(int32_t) * (T + 1));
    s->hist = malloc(sizeof(int64_t) * (T + 2));
    s->nb = T * 8 > 64 ? T * 8 : 64;
    s->first = malloc(sizeof(int32_t) * (s->nb + 2));
    return s->t && s->tv && s->ti && s->hist && s->first;
}

static void scratch_free(scratch_t *s) { free(s->t), free(s->tv), free(s->ti), free(s->hist), free(s->first); }

/* sort the row's thresholds (values already in s->t), then place every sample l != self. A sample between
 * the first and the last threshold finds its place through a table of B buckets over the thresholds' value
 * range: first[b] = the first threshold whose bucket is b or later, so a sample of bucket b is above the
 * thresholds before first[b], below those from first[b + 1] on, and compared only with its own bucket's
 * (usually none or one). The bucket, (v - lo) * scale truncated, never decreases as v grows (each
 * rounding is monotone), so that split is exact. */
#define RANK_ROW(VALUE_OF)                                                                                \
    do {                                                                                                  \
        qsort(s->t, T, sizeof(thr_t), by_key);                                                            \
        for (Py_ssize_t t = 0; t < T; t++) s->tv[t] = s->t[t].v, s->ti[t] = s->t[t].id;                   \
        double lo_v = s->tv[0], hi_v = s->tv[T - 1];                                                      \
        int32_t lo_i = s->ti[0], hi_i = s->ti[T - 1];                                                     \
        double scale = hi_v > lo_v ? (double)(s->nb - 1) / (hi_v - lo_v) : 0.0;                           \
        Py_ssize_t t0 = 0;                                                                                \
        for (Py_ssize_t bk = 0; bk <= s->nb; bk++) {                                                      \
            while (t0 < T && (Py_ssize_t)((s->tv[t0] - lo_v) * scale) < bk) t0++;                         \
            s->first[bk] = (int32_t)t0;                                                                   \
        }                                                                                                 \
        for (Py_ssize_t t = 0; t <= T; t++) s->hist[t] = 0;                                               \
        for (Py_ssize_t l = 0; l < n; l++) {                                                              \
            double v = VALUE_OF(l);                                                                       \
            if (v > hi_v || (v == hi_v && (int32_t)l >= hi_i) || l == self) continue; /* above them all */ \
            if (v < lo_v || (v == lo_v && (int32_t)l < lo_i)) {                                           \
                s->hist[0]++;                                                                             \
                continue;                                                                                 \
            }                                                                                             \
            Py_ssize_t bk = (Py_ssize_t)((v - lo_v) * scale);                                             \
            Py_ssize_t pos = s->first[bk], end = s->first[bk + 1];                                        \
            while (pos < end && (s->tv[pos] < v || (s->tv[pos] == v && s->ti[pos] <= (int32_t)l))) pos++; \
            s->hist[pos]++;                                                                               \
        }                                                                                                 \
        int64_t below = 0;                                                                                \
        for (Py_ssize_t t = 0; t < T; t++) {                                                              \
            below += s->hist[t];                                                                          \
            out[s->t[t].at] = below + 1;                                                                  \
        }                                                                                                 \
    } while (0)

static void block_rows(const void *g, int kind, Py_ssize_t n, const int32_t *base, int a, const int64_t *rows,
                       Py_ssize_t b, const int32_t *q, Py_ssize_t T, int64_t *outs, scratch_t *s) {
    for (Py_ssize_t r = 0; r < b; r++) {
        Py_ssize_t self = (Py_ssize_t)rows[r];
        const int32_t *gi = kind == 0 ? (const int32_t *)g + r * n : NULL;
        const float *gf = kind == 1 ? (const float *)g + r * n : NULL;
        const double *gd = kind == 2 ? (const double *)g + r * n : NULL;
        int64_t *out = outs + r * T;
        const int32_t *qr = q + r * T;
        for (Py_ssize_t t = 0; t < T; t++) s->t[t].id = qr[t], s->t[t].at = (int32_t)t;
        if (kind == 0) {
#define V0(l) ((double)base[l] + (double)a * (double)gi[l])
            for (Py_ssize_t t = 0; t < T; t++) s->t[t].v = V0(qr[t]);
            RANK_ROW(V0);
        } else if (kind == 1) {
#define V1(l) ((double)base[l] + (double)a * (double)gf[l])
            for (Py_ssize_t t = 0; t < T; t++) s->t[t].v = V1(qr[t]);
            RANK_ROW(V1);
        } else {
#define V2(l) (gd[l])
            for (Py_ssize_t t = 0; t < T; t++) s->t[t].v = V2(qr[t]);
            RANK_ROW(V2);
        }
    }
}

static inline double coord_value(const double *xi, const double *xl, Py_ssize_t m, int l1) {
    double acc = 0.0;
    for (Py_ssize_t j = 0; j < m; j++) {
        double diff = xi[j] - xl[j];
        double term = l1 ? fabs(diff) : diff * diff;
        acc = j == 0 ? term : acc + term;
    }
    return acc;
}

static void coord_rows(const double *x, Py_ssize_t n, Py_ssize_t m, int l1, const int64_t *rows, Py_ssize_t b,
                       const int32_t *q, Py_ssize_t T, int64_t *outs, scratch_t *s) {
    for (Py_ssize_t r = 0; r < b; r++) {
        Py_ssize_t self = (Py_ssize_t)rows[r];
        const double *xi = x + self * m;
        double x0 = xi[0], x1 = m > 1 ? xi[1] : 0.0;
        int64_t *out = outs + r * T;
        const int32_t *qr = q + r * T;
        for (Py_ssize_t t = 0; t < T; t++) {
            s->t[t].id = qr[t], s->t[t].at = (int32_t)t;
            s->t[t].v = coord_value(xi, x + (Py_ssize_t)qr[t] * m, m, l1);
        }
        if (m == 2 && l1) {
#define C2L1(l) (fabs(x0 - x[2 * (l)]) + fabs(x1 - x[2 * (l) + 1]))
            RANK_ROW(C2L1);
        } else if (m == 2) {
#define C2L2(l) ((x0 - x[2 * (l)]) * (x0 - x[2 * (l)]) + (x1 - x[2 * (l) + 1]) * (x1 - x[2 * (l) + 1]))
            RANK_ROW(C2L2);
        } else {
#define CM(l) coord_value(xi, x + (l) * m, m, l1)
            RANK_ROW(CM);
        }
    }
}

static PyObject *fail(const char *msg) {
    PyErr_SetString(PyExc_ValueError, msg);
    return NULL;
}

static int ids_ok(const int32_t *q, Py_ssize_t count, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < count; i++)
        if (q[i] < 0 || q[i] >= n) return 0;
    return 1;
}

static int rows_ok(const int64_t *rows, Py_ssize_t b, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < b; i++)
        if (rows[i] < 0 || rows[i] >= n) return 0;
    return 1;
}

static PyObject *py_block(PyObject *self, PyObject *args) {
    Py_buffer g, base, rows, q, out;
    Py_ssize_t n;
    int kind, a;
    if (!PyArg_ParseTuple(args, "y*iny*iy*y*w*", &g, &kind, &n, &base, &a, &rows, &q, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t b = rows.len / 8, T = b ? q.len / 4 / b : 0;
    Py_ssize_t item = kind == 2 ? 8 : 4;
    scratch_t s = {0};
    if (kind < 0 || kind > 2 || n <= 0 || n >= (Py_ssize_t)INT32_MAX || g.len != b * n * item ||
        q.len != b * T * 4 || out.len != b * T * 8 || (kind != 2 && base.len != n * 4)) {
        fail("block: g must be (b, n) of its kind, base (n,) int32, rows (b,) int64, q (b, T) int32, out (b, T) int64");
        goto done;
    }
    if (!rows_ok(rows.buf, b, n) || !ids_ok(q.buf, b * T, n)) {
        fail("block: an id is out of range");
        goto done;
    }
    if (T == 0 || b == 0) goto ok;
    if (!scratch_of(&s, T)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    block_rows(g.buf, kind, n, base.buf, a, rows.buf, b, q.buf, T, out.buf, &s);
    Py_END_ALLOW_THREADS
ok:
    result = Py_None;
    Py_INCREF(result);
done:
    scratch_free(&s);
    PyBuffer_Release(&g), PyBuffer_Release(&base), PyBuffer_Release(&rows), PyBuffer_Release(&q);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_coords(PyObject *self, PyObject *args) {
    Py_buffer x, rows, q, out;
    Py_ssize_t m;
    int l1;
    if (!PyArg_ParseTuple(args, "y*npy*y*w*", &x, &m, &l1, &rows, &q, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = m > 0 ? x.len / 8 / m : 0, b = rows.len / 8, T = b ? q.len / 4 / b : 0;
    scratch_t s = {0};
    if (m <= 0 || n <= 0 || n >= (Py_ssize_t)INT32_MAX || x.len != n * m * 8 || q.len != b * T * 4 ||
        out.len != b * T * 8) {
        fail("coords: x must be (n, m) float64, rows (b,) int64, q (b, T) int32, out (b, T) int64");
        goto done;
    }
    if (!rows_ok(rows.buf, b, n) || !ids_ok(q.buf, b * T, n)) {
        fail("coords: an id is out of range");
        goto done;
    }
    if (T == 0 || b == 0) goto ok;
    if (!scratch_of(&s, T)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    coord_rows(x.buf, n, m, l1, rows.buf, b, q.buf, T, out.buf, &s);
    Py_END_ALLOW_THREADS
ok:
    result = Py_None;
    Py_INCREF(result);
done:
    scratch_free(&s);
    PyBuffer_Release(&x), PyBuffer_Release(&rows), PyBuffer_Release(&q), PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"block", py_block, METH_VARARGS, "block(g, kind, n, base, a, rows, q, out): ranks of q's ids in whole rows"},
    {"coords", py_coords, METH_VARARGS, "coords(x, m, l1, rows, q, out): ranks of q's ids among float codes"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ranks", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ranks(void) { return PyModule_Create(&module); }
