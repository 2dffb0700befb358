/* Exact top-k selection over integer scores, fused with the score itself.
 *
 *   smallest(g, base, a, rows, n, k, out_vals, out_ids)
 *     g: (b, n) int32, base: (n,) int32, rows: (b,) int64 (each query's own id, skipped; -1: none),
 *     out_vals, out_ids: (b, k) int32; all C-contiguous.
 *     For each query i: the k smallest score(j) = base[j] + a * g[i, j] over j != rows[i], ordered by
 *     (score, j) and written nearest first. Exact: the order is total, so the k kept are THE k smallest
 *     pairs (score, j), ties broken by the lower j, with no approximation and no fallback.
 *
 * Pixel L2 uses base = |x_j|^2 and a = -2 over integer dot products g (so score + |x_i|^2 is the exact
 * squared distance); pixel L1 uses base = 0 and a = 1 over the SAD sums. Per query, a buffer collects
 * the pairs whose packed key (score, j) is below a running threshold, and a quickselect shrinks it to k
 * whenever it fills, tightening the threshold. A 16-wide block is tested against the threshold with a
 * loop the compiler vectorises, so most of the row costs one compare per score. The GIL is released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

static inline int64_t pack(int32_t score, Py_ssize_t j) { return (int64_t)score * 4294967296LL + (int64_t)j; }

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

/* Add a key below the threshold; when the buffer is full, keep its k smallest and tighten the threshold. */
static inline void keep(int64_t key, int64_t *buf, Py_ssize_t *cnt, Py_ssize_t cap, Py_ssize_t k, int64_t *thr,
                        int32_t *thr_score) {
    buf[(*cnt)++] = key;
    if (*cnt == cap) {
        quickselect(buf, *cnt, k);
        *cnt = k;
        *thr = max_of(buf, k);
        *thr_score = (int32_t)((*thr - (*thr & 0xffffffffLL)) / 4294967296LL);
    }
}

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
/* one build for every x86 CPU: the loader picks the widest clone the CPU runs */
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void select_rows(const int32_t *G, const int32_t *base, int32_t a, const int64_t *rows, Py_ssize_t b,
                        Py_ssize_t n, Py_ssize_t k, int32_t *out_vals, int32_t *out_ids, int64_t *buf,
                        Py_ssize_t cap) {
    for (Py_ssize_t i = 0; i < b; i++) {
        const int32_t *g = G + i * n;
        const int64_t self = rows[i];
        Py_ssize_t cnt = 0;
        int64_t thr = INT64_MAX;    /* keys below this may still be among the k smallest */
        int32_t thr_score = INT32_MAX; /* the score part of thr: a cheap vector prefilter */
        Py_ssize_t j0 = 0;
        for (; j0 + 16 <= n; j0 += 16) {
            int32_t s[16];
            int32_t mn = INT32_MAX;
            for (int t = 0; t < 16; t++) {
                s[t] = base[j0 + t] + a * g[j0 + t];
                mn = s[t] < mn ? s[t] : mn;
            }
            if (mn > thr_score) continue;
            for (int t = 0; t < 16; t++) {
                if (s[t] > thr_score) continue;
                Py_ssize_t j = j0 + t;
                int64_t key = pack(s[t], j);
                if (key < thr && j != self) keep(key, buf, &cnt, cap, k, &thr, &thr_score);
            }
        }
        for (; j0 < n; j0++) { /* the tail */
            int64_t key = pack(base[j0] + a * g[j0], j0);
            if (key < thr && j0 != self) keep(key, buf, &cnt, cap, k, &thr, &thr_score);
        }
        if (cnt > k) quickselect(buf, cnt, k);
        Py_ssize_t kept = cnt < k ? cnt : k;
        qsort(buf, (size_t)kept, sizeof(int64_t), cmp64);
        for (Py_ssize_t t = 0; t < k; t++) {
            if (t < kept) {
                int64_t key = buf[t];
                int64_t j = key & 0xffffffffLL;
                out_ids[i * k + t] = (int32_t)j;
                out_vals[i * k + t] = (int32_t)((key - j) / 4294967296LL);
            } else { /* fewer than k candidates (k >= n): never asked for by the engine */
                out_ids[i * k + t] = -1;
                out_vals[i * k + t] = INT32_MAX;
            }
        }
    }
}

static PyObject *py_smallest(PyObject *self, PyObject *args) {
    Py_buffer g, base, rows, vals, ids;
    int a;
    Py_ssize_t n, k;
    if (!PyArg_ParseTuple(args, "y*y*iy*nnw*w*", &g, &base, &a, &rows, &n, &k, &vals, &ids)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t b = rows.len / (Py_ssize_t)sizeof(int64_t);
    if (n <= 0 || k <= 0 || g.len != b * n * (Py_ssize_t)sizeof(int32_t) ||
        base.len != n * (Py_ssize_t)sizeof(int32_t) || vals.len != b * k * (Py_ssize_t)sizeof(int32_t) ||
        ids.len != b * k * (Py_ssize_t)sizeof(int32_t) || n >= (Py_ssize_t)INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "smallest: buffer sizes do not match (b, n) and (b, k)");
        goto done;
    }
    Py_ssize_t cap = 4 * k > 256 ? 4 * k : 256;
    int64_t *buf = malloc((size_t)cap * sizeof(int64_t));
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    select_rows(g.buf, base.buf, (int32_t)a, rows.buf, b, n, k, vals.buf, ids.buf, buf, cap);
    Py_END_ALLOW_THREADS
    free(buf);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&g);
    PyBuffer_Release(&base);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&vals);
    PyBuffer_Release(&ids);
    return result;
}

static PyMethodDef methods[] = {
    {"smallest", py_smallest, METH_VARARGS,
     "smallest(g, base, a, rows, n, k, out_vals, out_ids): per row, the k smallest base[j] + a*g[i, j] by (score, j)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_select", NULL, -1, methods};

PyMODINIT_FUNC PyInit__select(void) { return PyModule_Create(&module); }
