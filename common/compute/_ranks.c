/* Exact ranks beyond the stored top K: for query row i and a list of ids j, the rank of each j among the
 * N - 1 other samples ordered by (distance from i, id), 1 = nearest (STUDY.md, metrics item 6).
 *
 * A row's asked ids are its thresholds: their values are sorted by (value, id), every other sample l of
 * the row is placed among them (pos = how many thresholds are at or below (value_l, l)), a histogram of
 * the positions is summed, and rank(j) = 1 + the samples strictly below (value_j, j). Far samples (above
 * every threshold) cost one comparison; 2-D codes go by cells of a grid (grid_rows). Where a sample's place
 * depends on its value, no branch does: each row's values fall anew, and such branches mispredicted at
 * random cost about a third of a row's counting (docs/benchmarks.md, Rank measures). No rounding: the values are
 *   block(g, kind, base, a, rows, q, out)   a block of whole rows: value = base[l] + a * g[r, l] with g
 *       int32 (kind 0) or float32 holding exact integers (kind 1), as the pixel paths score; or g float64
 *       values as they are (kind 2, base and a unused)
 *   coords(x, l1, rows, q, out)   float codes (N, m) float64: value = sum over coordinates in order of
 *       |x_i - x_l| or (x_i - x_l)^2, one rounding per operation, as common/compute/neighbors.py's float64
 *       formula computes it (this file is built with -ffp-contract=off: no fused multiply-add)
 *   coords(x, 2, l1, rows, q, out, start, id, cell_of, xy, box)   2-D codes over a grid of cells the caller
 *       built once (common/compute/ranks.py, rank_grid): start (cells + 1,) int64, id and cell_of (n,)
 *       int32, xy (n, 2) float64 (the codes cell by cell), box (cells, 4) float64 (each cell's tight box)
 * rows (b,) int64 are the query ids, q (b, T) int32 the ids asked per row, out (b, T) int64 their ranks.
 *   error_sums(r, T, c0, c1, weight, count, gaps)   adds up what the rank measures need of a block of ranks
 * The GIL is released; callers split rows between threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double v;
    int32_t id;
    int32_t at; /* where it was asked (its column in q) */
} thr_t;

typedef struct {
    thr_t *t, *t2; /* (T,) the thresholds as asked, then sorted (t2 while sorting) */
    double *tv;
    int64_t *tk;    /* (T + 4,) the sorted values as ordered integers (okey), then 4 above every value */
    int32_t *ti;    /* (T + 4,) their ids, then 4 above every id */
    int64_t *hist;
    int32_t *first; /* (nb + 3,) per bucket: the first threshold in it or after it */
    Py_ssize_t nb;  /* buckets among the thresholds: 16 per threshold, at least 64 */
    int32_t *cnt;   /* (nb + 2,) samples per bucket */
    uint8_t *mk;    /* (nb + 2,) whether a bucket holds a threshold */
    double *vals;   /* (n,) a row's values */
    int32_t *idx;   /* (n,) their buckets */
    int32_t *near;  /* (n,) the samples in a bucket that holds a threshold */
    int32_t *ids;   /* (n,) the samples listed (2-D codes: by grid cell) */
} scratch_t;

static int scratch_of(scratch_t *s, Py_ssize_t T, Py_ssize_t n) {
    s->t = malloc(sizeof(thr_t) * (T + 1));
    s->t2 = malloc(sizeof(thr_t) * (T + 1));
    s->tv = malloc(sizeof(double) * (T + 1));
    s->tk = malloc(sizeof(int64_t) * (T + 4));
    s->ti = malloc(sizeof(int32_t) * (T + 4));
    s->hist = malloc(sizeof(int64_t) * (T + 2));
    s->nb = T * 16 > 64 ? T * 16 : 64;
    s->first = malloc(sizeof(int32_t) * (s->nb + 3));
    s->cnt = malloc(sizeof(int32_t) * (s->nb + 2));
    s->mk = malloc(s->nb + 2);
    s->vals = malloc(sizeof(double) * (n + 1));
    s->idx = malloc(sizeof(int32_t) * (n + 1));
    s->near = malloc(sizeof(int32_t) * (n + 1));
    s->ids = malloc(sizeof(int32_t) * (n + 1));
    return s->t && s->t2 && s->tv && s->tk && s->ti && s->hist && s->first && s->cnt && s->mk && s->vals && s->idx &&
           s->near && s->ids;
}

static void scratch_free(scratch_t *s) {
    free(s->t), free(s->t2), free(s->tv), free(s->tk), free(s->ti), free(s->hist), free(s->first), free(s->cnt);
    free(s->mk), free(s->vals), free(s->idx), free(s->near), free(s->ids);
}

/* A row's sorted thresholds and their bucket table. Bucket 0 holds the samples below every threshold,
 * nb + 1 those above, 1..nb split the thresholds' value range evenly: B(v) = (v - lo) * scale + 1 clamped
 * and truncated, the same operations for samples and thresholds. B never decreases as v grows (each
 * rounding is monotone), so a sample of bucket b is above every threshold of a lower bucket and below every
 * one of a higher bucket: first[b] = the first threshold of bucket b or later, and only the thresholds of
 * its own bucket (usually none or one) need comparing. */
typedef struct {
    const double *tv;
    const int64_t *tk;
    const int32_t *ti;
    const int32_t *first;
    int64_t *hist;
    Py_ssize_t T, nb;
    double lo_v, scale, top; /* top: nb + 1 */
} row_t;

static inline int32_t bucket_of(double v, double lo, double scale, double top) {
    double f = (v - lo) * scale + 1.0;
    f = f > 0.0 ? f : 0.0;
    f = f < top ? f : top;
    return (int32_t)f;
}

/* a double as an integer of the same order (-0.0 read as 0.0; no NaN reaches here: codes are checked finite) */
static inline int64_t okey(double v) {
    v += 0.0;
    int64_t b;
    memcpy(&b, &v, 8);
    return b ^ ((b >> 63) & INT64_MAX);
}

static inline int before(const thr_t *a, const thr_t *b) { return a->v < b->v || (a->v == b->v && a->id < b->id); }

static void insertion_sort(thr_t *t, Py_ssize_t n) {
    for (Py_ssize_t i = 1; i < n; i++) {
        thr_t x = t[i];
        Py_ssize_t j = i;
        for (; j > 0 && before(&x, &t[j - 1]); j--) t[j] = t[j - 1];
        t[j] = x;
    }
}

/* sort by (value, id): an insertion sort below 16, else a median-of-three quicksort (qsort's callback per
 * comparison cost as much as the rest of a row's set-up) */
static void sort_thr(thr_t *t, Py_ssize_t n) {
    while (n > 16) {
        Py_ssize_t mid = n / 2;
        thr_t tmp;
        if (before(&t[mid], &t[0])) tmp = t[mid], t[mid] = t[0], t[0] = tmp;
        if (before(&t[n - 1], &t[0])) tmp = t[n - 1], t[n - 1] = t[0], t[0] = tmp;
        if (before(&t[n - 1], &t[mid])) tmp = t[n - 1], t[n - 1] = t[mid], t[mid] = tmp;
        thr_t pivot = t[mid];
        Py_ssize_t i = 0, j = n - 1;
        while (i <= j) {
            while (before(&t[i], &pivot)) i++;
            while (before(&pivot, &t[j])) j--;
            if (i <= j) tmp = t[i], t[i] = t[j], t[j] = tmp, i++, j--;
        }
        if (j + 1 < n - i) { /* the smaller side first, by recursion; the larger by the loop */
            sort_thr(t, j + 1);
            t += i, n -= i;
        } else {
            sort_thr(t + i, n - i);
            n = j + 1;
        }
    }
    insertion_sort(t, n);
}

/* The thresholds s->t[0..T) sorted by (value, id) and their bucket table. They are counted into their
 * buckets first, which are in order already, so an insertion sort after it has only the disorder within
 * a bucket to mend (a comparison sort's branches go either way at random, a row at a time). Where one
 * bucket holds more than 16 (many asked ids at one value), sort_thr sorts them instead. */
static row_t row_of(scratch_t *s, Py_ssize_t T) {
    double lo = s->t[0].v, hi = s->t[0].v;
    for (Py_ssize_t t = 1; t < T; t++) lo = fmin(lo, s->t[t].v), hi = fmax(hi, s->t[t].v);
    Py_ssize_t nb = s->nb;
    row_t r = {s->tv, s->tk, s->ti, s->first, s->hist, T, nb, lo, hi > lo ? (double)(nb - 1) / (hi - lo) : 0.0,
               (double)(nb + 1)};
    /* first[b] = how many thresholds lie in buckets below b: a count per bucket, summed */
    memset(s->first, 0, sizeof(int32_t) * (nb + 3));
    for (Py_ssize_t t = 0; t < T; t++) s->first[bucket_of(s->t[t].v, r.lo_v, r.scale, r.top) + 1]++;
    int32_t most = 0;
    for (Py_ssize_t bk = 1; bk <= nb + 2; bk++) most = s->first[bk] > most ? s->first[bk] : most;
    for (Py_ssize_t bk = 1; bk <= nb + 2; bk++) s->first[bk] += s->first[bk - 1];
    int32_t *cur = s->cnt; /* each bucket's next free place; place_row counts into it afterwards */
    memcpy(cur, s->first, sizeof(int32_t) * (nb + 2));
    for (Py_ssize_t t = 0; t < T; t++) s->t2[cur[bucket_of(s->t[t].v, r.lo_v, r.scale, r.top)]++] = s->t[t];
    if (most > 16) sort_thr(s->t2, T);
    else insertion_sort(s->t2, T);
    memcpy(s->t, s->t2, sizeof(thr_t) * T);
    for (Py_ssize_t t = 0; t < T; t++) s->tv[t] = s->t[t].v, s->tk[t] = okey(s->t[t].v), s->ti[t] = s->t[t].id;
    for (Py_ssize_t t = T; t < T + 4; t++) s->tk[t] = INT64_MAX, s->ti[t] = INT32_MAX;
    memset(s->hist, 0, sizeof(int64_t) * (T + 1));
    return r;
}

/* place (v, l) of bucket bk: count it at how many thresholds are at or below it (T: above them all, counted
 * in hist[T], which no rank reads) */
static inline void place_in(const row_t *r, int32_t bk, double v, int32_t l) {
    Py_ssize_t pos = r->first[bk], end = r->first[bk + 1];
    int64_t k = okey(v);
    const int64_t *tk = r->tk + pos;
    const int32_t *ti = r->ti + pos;
    /* No branch on the values (a row's samples would mispredict it at random): the next four thresholds
     * compared at once. One of a later bucket is above the sample, as are the four past the last. */
    Py_ssize_t c = 0;
    for (int u = 0; u < 4; u++) c += (tk[u] < k) | ((tk[u] == k) & (ti[u] <= l));
    if (end - pos > 4) /* rare: more than four thresholds in one bucket */
        for (Py_ssize_t at = pos + 4; at < end && (r->tk[at] < k || (r->tk[at] == k && r->ti[at] <= l)); at++) c++;
    r->hist[pos + c]++;
}

/* how many thresholds have a value below v (strict) or at most v (!strict) */
static inline Py_ssize_t count_below(const row_t *r, double v, int strict) {
    int32_t bk = bucket_of(v, r->lo_v, r->scale, r->top);
    Py_ssize_t pos = r->first[bk], end = r->first[bk + 1];
    while (pos < end && (strict ? r->tv[pos] < v : r->tv[pos] <= v)) pos++;
    return pos;
}

/* A whole row at once, in two passes: the values' buckets (no branches: the compiler vectorises it), then
 * a count per bucket, where only the samples of buckets holding a threshold are placed one by one. */
__attribute__((target_clones("avx2", "default")))
static void buckets_of(const double *v, Py_ssize_t n, double lo, double scale, double top, int32_t *idx) {
    for (Py_ssize_t l = 0; l < n; l++) idx[l] = bucket_of(v[l], lo, scale, top);
}

__attribute__((target_clones("avx2", "default")))
static void values_i32(const int32_t *g, const int32_t *base, double a, Py_ssize_t n, double *v) {
    for (Py_ssize_t l = 0; l < n; l++) v[l] = (double)base[l] + a * (double)g[l];
}

__attribute__((target_clones("avx2", "default")))
static void values_f32(const float *g, const int32_t *base, double a, Py_ssize_t n, double *v) {
    for (Py_ssize_t l = 0; l < n; l++) v[l] = (double)base[l] + a * (double)g[l];
}

/* place the samples ids[0..n) (ids NULL: 0..n) of values v, all but the one at index ``skip`` (-1: none) */
static void place_row(const row_t *r, scratch_t *s, const double *v, const int32_t *ids, Py_ssize_t n,
                      Py_ssize_t skip) {
    int32_t *idx = s->idx, *near = s->near;
    buckets_of(v, n, r->lo_v, r->scale, r->top, idx);
    if (skip >= 0) idx[skip] = (int32_t)(r->nb + 1); /* not its own neighbour */
    memset(s->cnt, 0, sizeof(int32_t) * (r->nb + 2));
    for (Py_ssize_t b = 0; b <= r->nb + 1; b++) s->mk[b] = r->first[b] < r->first[b + 1];
    Py_ssize_t m = 0;
    for (Py_ssize_t l = 0; l < n; l++) { /* no branch: the samples to place one by one are listed as found */
        int32_t b = idx[l];
        s->cnt[b]++;
        near[m] = (int32_t)l;
        m += s->mk[b];
    }
    for (Py_ssize_t j = 0; j < m; j++) place_in(r, idx[near[j]], v[near[j]], ids ? ids[near[j]] : near[j]);
    /* cnt[b] becomes the samples of the buckets up to b that hold no threshold (a running sum in a register:
     * adding each bucket into hist[first[b]] would chain every store to the last one) */
    int32_t acc = 0;
    for (Py_ssize_t b = 0; b <= r->nb + 1; b++) acc += s->cnt[b] & ((int32_t)s->mk[b] - 1), s->cnt[b] = acc;
}

/* the ranks from the histogram: rank(threshold t) = 1 + the samples placed before it */
static void finish_row(const row_t *r, const scratch_t *s, int64_t *out) {
    int64_t below = 0;
    for (Py_ssize_t t = 0; t < r->T; t++) {
        below += r->hist[t];
        out[s->t[t].at] = below + 1 + s->cnt[bucket_of(r->tv[t], r->lo_v, r->scale, r->top)];
    }
}

static void block_rows(const void *g, int kind, Py_ssize_t n, const int32_t *base, int a, const int64_t *rows,
                       Py_ssize_t b, const int32_t *q, Py_ssize_t T, int64_t *outs, scratch_t *s) {
    for (Py_ssize_t rr = 0; rr < b; rr++) {
        const double *v = (const double *)g + rr * n; /* kind 2: the values as they are */
        if (kind == 0) values_i32((const int32_t *)g + rr * n, base, (double)a, n, s->vals), v = s->vals;
        if (kind == 1) values_f32((const float *)g + rr * n, base, (double)a, n, s->vals), v = s->vals;
        const int32_t *qr = q + rr * T; /* the asked values read from the row just written: in the cache */
        for (Py_ssize_t t = 0; t < T; t++) s->t[t].id = qr[t], s->t[t].at = (int32_t)t, s->t[t].v = v[qr[t]];
        row_t r = row_of(s, T);
        place_row(&r, s, v, NULL, n, (Py_ssize_t)rows[rr]);
        finish_row(&r, s, outs + rr * T);
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

static inline double pair2(double x0, double x1, double a, double b, int l1) {
    double d0 = x0 - a, d1 = x1 - b;
    return l1 ? fabs(d0) + fabs(d1) : d0 * d0 + d1 * d1;
}

/* 2-D codes sorted into a grid of cells (PER_CELL points each: common/compute/ranks.py's rank_grid builds it
 * once a pass), each with the tight box of its points. For a query row, a cell's values lie in [lo, hi]
 * computed from its box by the same operations as a pair's (x_i - a rounds monotonically in a, and so do |.|,
 * squaring and the sum): a cell above every threshold is skipped, one wholly between two threshold values is
 * counted at once, one whose range holds at most AT_ONCE threshold values has each point compared with those
 * (cell_at_once, vectorised over the points), and only the others are listed and placed point by point, so a
 * row costs its cells plus the points near its thresholds. */
typedef struct {
    Py_ssize_t cells;
    Py_ssize_t *start; /* (cells + 1,) */
    int32_t *id;       /* (n,) point ids, cell by cell */
    int32_t *cell_of;  /* (n,) each point's cell */
    double *xy;        /* (n, 2) their codes */
    double *box;       /* (cells, 4): lowest and highest first, then second coordinate */
} grid_t;

/* the least and the most |x - a| over a in [lo, hi], as fl(x - a) gives them */
static inline void spread(double x, double lo, double hi, double *least, double *most) {
    double a = x - hi, b = x - lo; /* fl(x - a) runs from a to b */
    *least = (a <= 0.0 && b >= 0.0) ? 0.0 : fmin(fabs(a), fabs(b));
    *most = fmax(fabs(a), fabs(b));
}

/* How many thresholds a cell's points are compared with at once, at most: where more than that many lie in
 * the cell's range its points are listed and placed one by one instead. */
#define AT_ONCE 8

/* up[j] = the points at[c0..c1) of one cell not below threshold j of the W (tk, ti). One pass over the
 * points with no branch and W comparisons each: the compiler vectorises it over the points. */
typedef void (*not_below_fn)(const double *xy, const int32_t *id, Py_ssize_t c0, Py_ssize_t c1, double x0,
                             double x1, int l1, const int64_t *tk, const int64_t *ti, int64_t *up);
#define NOT_BELOW(W)                                                                                            \
    __attribute__((target_clones("avx512f", "avx2", "sse4.2", "default")))                                      \
    static void not_below_##W(const double *xy, const int32_t *id, Py_ssize_t c0, Py_ssize_t c1, double x0,     \
                              double x1, int l1, const int64_t *tk, const int64_t *ti, int64_t *up) {           \
        int64_t u[W] = {0};                                                                                     \
        for (Py_ssize_t at = c0; at < c1; at++) {                                                               \
            int64_t k = okey(pair2(x0, x1, xy[2 * at], xy[2 * at + 1], l1)), l = id[at];                        \
            for (int j = 0; j < W; j++) u[j] += (tk[j] < k) | ((tk[j] == k) & (ti[j] <= l));                    \
        }                                                                                                       \
        for (int j = 0; j < W; j++) up[j] = u[j];                                                               \
    }
NOT_BELOW(1)
NOT_BELOW(2)
NOT_BELOW(3)
NOT_BELOW(4)
NOT_BELOW(5)
NOT_BELOW(6)
NOT_BELOW(7)
NOT_BELOW(8)

/* The points at[c0..c1) of one cell whose values lie in [lo, hi], where only the w <= AT_ONCE thresholds
 * p..p+w-1 have their values in [lo, hi]: a point lies at p + how many of those it is not below. As the
 * thresholds are sorted, the points at p + j or later are those not below threshold p + j - 1: w counts and
 * no list. */
static void cell_at_once(const row_t *r, const grid_t *G, Py_ssize_t c0, Py_ssize_t c1, double x0, double x1,
                         int l1, Py_ssize_t p, Py_ssize_t w) {
    int64_t tk[AT_ONCE], ti[AT_ONCE], up[AT_ONCE];
    for (Py_ssize_t j = 0; j < w; j++) tk[j] = r->tk[p + j], ti[j] = r->ti[p + j];
    static const not_below_fn by_count[AT_ONCE] = {not_below_1, not_below_2, not_below_3, not_below_4,
                                                   not_below_5, not_below_6, not_below_7, not_below_8};
    by_count[w - 1](G->xy, G->id, c0, c1, x0, x1, l1, tk, ti, up);
    int64_t before = c1 - c0; /* the points at p or later */
    for (Py_ssize_t j = 0; j < w; j++) r->hist[p + j] += before - up[j], before = up[j];
    r->hist[p + w] += before;
}

static void grid_rows(const grid_t *G, const double *x, int l1, const int64_t *rows, Py_ssize_t b, const int32_t *q,
                      Py_ssize_t T, int64_t *outs, scratch_t *s) {
    for (Py_ssize_t rr = 0; rr < b; rr++) {
        Py_ssize_t self = (Py_ssize_t)rows[rr];
        double x0 = x[2 * self], x1 = x[2 * self + 1];
        const int32_t *qr = q + rr * T;
        for (Py_ssize_t t = 0; t < T; t++)
            s->t[t].id = qr[t], s->t[t].at = (int32_t)t, s->t[t].v = pair2(x0, x1, x[2 * qr[t]], x[2 * qr[t] + 1], l1);
        row_t r = row_of(s, T);
        int32_t own = G->cell_of[self];
        Py_ssize_t m = 0, skip = -1; /* the points of the cells not counted at once, listed with their values */
        for (Py_ssize_t c = 0; c < G->cells; c++) {
            Py_ssize_t c0 = G->start[c], c1 = G->start[c + 1];
            if (c0 == c1) continue;
            if (c != own) {
                const double *bx = G->box + 4 * c;
                double m0, M0, m1, M1;
                spread(x0, bx[0], bx[1], &m0, &M0);
                spread(x1, bx[2], bx[3], &m1, &M1);
                double lo = l1 ? m0 + m1 : m0 * m0 + m1 * m1, hi = l1 ? M0 + M1 : M0 * M0 + M1 * M1;
                Py_ssize_t p = count_below(&r, lo, 1), w = count_below(&r, hi, 0) - p;
                if (w == 0) { /* no threshold value in [lo, hi]: all at one place */
                    r.hist[p] += c1 - c0;
                    continue;
                }
                if (w <= AT_ONCE) { /* a few: each point compared with them */
                    cell_at_once(&r, G, c0, c1, x0, x1, l1, p, w);
                    continue;
                }
            }
            for (Py_ssize_t at = c0; at < c1; at++, m++) {
                s->vals[m] = pair2(x0, x1, G->xy[2 * at], G->xy[2 * at + 1], l1);
                s->ids[m] = G->id[at];
                if (G->id[at] == self) skip = m;
            }
        }
        place_row(&r, s, s->vals, s->ids, m, skip);
        finish_row(&r, s, outs + rr * T);
    }
}

static void coord_rows(const double *x, Py_ssize_t n, Py_ssize_t m, int l1, const int64_t *rows, Py_ssize_t b,
                       const int32_t *q, Py_ssize_t T, int64_t *outs, scratch_t *s) {
    for (Py_ssize_t rr = 0; rr < b; rr++) {
        Py_ssize_t self = (Py_ssize_t)rows[rr];
        const double *xi = x + self * m;
        const int32_t *qr = q + rr * T;
        for (Py_ssize_t t = 0; t < T; t++)
            s->t[t].id = qr[t], s->t[t].at = (int32_t)t, s->t[t].v = coord_value(xi, x + (Py_ssize_t)qr[t] * m, m, l1);
        row_t r = row_of(s, T);
        for (Py_ssize_t l = 0; l < n; l++) s->vals[l] = coord_value(xi, x + l * m, m, l1);
        place_row(&r, s, s->vals, NULL, n, self);
        finish_row(&r, s, outs + rr * T);
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
    if (!scratch_of(&s, T, n)) {
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

/* the optional grid of coords (cells + 1 offsets, then per point its id and cell, its code, per cell its box):
 * whether it is whole and consistent, else a ValueError */
static int grid_ok(const Py_buffer *start, const Py_buffer *id, const Py_buffer *cell_of, const Py_buffer *xy,
                   const Py_buffer *box, Py_ssize_t n, Py_ssize_t m) {
    Py_ssize_t cells = start->len / 8 - 1;
    const int64_t *st = start->buf;
    const int32_t *gid = id->buf, *gc = cell_of->buf;
    if (sizeof(Py_ssize_t) != 8 || m != 2 || cells < 1 || id->len != n * 4 || cell_of->len != n * 4 ||
        xy->len != n * 16 || box->len != cells * 32 || st[0] != 0 || st[cells] != n) {
        fail("coords: a grid is for 2-D codes: start (cells + 1,) int64 from 0 to n, id and cell_of (n,) int32, xy "
             "(n, 2) and box (cells, 4) float64");
        return 0;
    }
    for (Py_ssize_t c = 0; c < cells; c++)
        if (st[c + 1] < st[c]) return fail("coords: the grid's start must not decrease") != NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (gid[i] < 0 || gid[i] >= n || gc[i] < 0 || gc[i] >= cells)
            return fail("coords: a grid id or cell is out of range") != NULL;
    return 1;
}

static PyObject *py_coords(PyObject *self, PyObject *args) {
    Py_buffer x, rows, q, out, start = {0}, id = {0}, cell_of = {0}, xy = {0}, box = {0};
    Py_ssize_t m;
    int l1;
    if (!PyArg_ParseTuple(args, "y*npy*y*w*|y*y*y*y*y*", &x, &m, &l1, &rows, &q, &out, &start, &id, &cell_of, &xy,
                          &box))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = m > 0 ? x.len / 8 / m : 0, b = rows.len / 8, T = b ? q.len / 4 / b : 0;
    int gridded = start.obj != NULL;
    scratch_t s = {0};
    if (m <= 0 || n <= 0 || n >= (Py_ssize_t)INT32_MAX || x.len != n * m * 8 || q.len != b * T * 4 ||
        out.len != b * T * 8 || (gridded && box.obj == NULL)) {
        fail("coords: x must be (n, m) float64, rows (b,) int64, q (b, T) int32, out (b, T) int64, and a grid whole");
        goto done;
    }
    if (gridded && !grid_ok(&start, &id, &cell_of, &xy, &box, n, m)) goto done;
    if (!rows_ok(rows.buf, b, n) || !ids_ok(q.buf, b * T, n)) {
        fail("coords: an id is out of range");
        goto done;
    }
    if (T == 0 || b == 0) goto ok;
    if (!scratch_of(&s, T, n)) {
        PyErr_NoMemory();
        goto done;
    }
    grid_t G = {start.len / 8 - 1, (Py_ssize_t *)start.buf, (int32_t *)id.buf, (int32_t *)cell_of.buf,
                (double *)xy.buf, (double *)box.buf};
    Py_BEGIN_ALLOW_THREADS
    if (gridded) grid_rows(&G, x.buf, l1, rows.buf, b, q.buf, T, out.buf, &s);
    else coord_rows(x.buf, n, m, l1, rows.buf, b, q.buf, T, out.buf, &s);
    Py_END_ALLOW_THREADS
ok:
    result = Py_None;
    Py_INCREF(result);
done:
    scratch_free(&s);
    PyBuffer_Release(&x), PyBuffer_Release(&rows), PyBuffer_Release(&q), PyBuffer_Release(&out);
    Py_buffer *grid[] = {&start, &id, &cell_of, &xy, &box};
    for (int i = 0; i < 5; i++)
        if (grid[i]->obj != NULL) PyBuffer_Release(grid[i]);
    return result;
}

/* error_sums(r, T, c0, c1, weight, count, gaps): adds to weight, count (k + 2,) and gaps (k,) int64 (k = c1 - c0)
 * the terms of common/compute/metrics.py's rank_error_sums over the columns c0..c1 of ranks r (b, T) int64: a
 * neighbour at rank p here and q > p there adds q to weight[p] and 1 to count[p] and takes them off again at
 * min(q, k + 1); |q - p| goes to gaps[p - 1]. Whole numbers in int64, so any split of the rows sums the same;
 * numpy's bincounts of the same took a quarter of a code pass. */
static PyObject *py_error_sums(PyObject *self, PyObject *args) {
    Py_buffer r, w, c, g;
    Py_ssize_t T, c0, c1;
    if (!PyArg_ParseTuple(args, "y*nnnw*w*w*", &r, &T, &c0, &c1, &w, &c, &g)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t k = c1 - c0, b = T > 0 ? r.len / 8 / T : 0;
    if (T <= 0 || c0 < 0 || k <= 0 || c1 > T || r.len != b * T * 8 || w.len != (k + 2) * 8 || c.len != (k + 2) * 8 ||
        g.len != k * 8) {
        fail("error_sums: r must be (b, T) int64 with 0 <= c0 < c1 <= T, weight and count (c1 - c0 + 2,) and gaps "
             "(c1 - c0,) int64");
        goto done;
    }
    const int64_t *rr = r.buf;
    int64_t *wt = w.buf, *ct = c.buf, *gp = g.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < b; i++) {
        const int64_t *q = rr + i * T + c0;
        for (Py_ssize_t p = 1; p <= k; p++) {
            int64_t v = q[p - 1];
            if (v > p) {
                Py_ssize_t stop = v < k + 1 ? (Py_ssize_t)v : k + 1;
                wt[p] += v, wt[stop] -= v, ct[p]++, ct[stop]--;
                gp[p - 1] += v - p;
            } else {
                gp[p - 1] += p - v;
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&r), PyBuffer_Release(&w), PyBuffer_Release(&c), PyBuffer_Release(&g);
    return result;
}

static PyMethodDef methods[] = {
    {"block", py_block, METH_VARARGS, "block(g, kind, n, base, a, rows, q, out): ranks of q's ids in whole rows"},
    {"coords", py_coords, METH_VARARGS, "coords(x, m, l1, rows, q, out): ranks of q's ids among float codes"},
    {"error_sums", py_error_sums, METH_VARARGS, "error_sums(r, T, c0, c1, weight, count, gaps): rank_error_sums terms"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ranks", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ranks(void) { return PyModule_Create(&module); }
