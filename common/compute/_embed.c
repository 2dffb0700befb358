/* The loops of relu_keep's map refinement that numpy would run as gathers over millions of elements
 * (common/compute/refining.py): the exact distances to each sample's listed neighbours, t-SNE's attraction
 * over the neighbour graph, and the particle-mesh steps of its repulsion (spreading the points onto a grid,
 * reading the convolved grid back at the points).
 *
 *   attract(y, ptr, cols, w, lo, hi, out)   for rows lo..hi: out[i] = sum over the graph's edges (i, j) of
 *       w_ij (y_i - y_j) / (1 + |y_i - y_j|^2); y (n, 2) float64, ptr (n + 1,) int64, cols (E,) int32,
 *       w (E,) float64, out (n, 2) float64. Each row sums its edges in order: the same bits however rows
 *       are split between threads.
 *   spread(y, x0, y0, h, nx, stride, rho)   rho (nx, stride) float64 += each point's bilinear (cloud-in-cell)
 *       weights at the four grid nodes around it; node (a, b) sits at (x0 + a h, y0 + b h). Serial, in order.
 *   read(grids, g, size, y, x0, y0, h, stride, lo, hi, out)   for points lo..hi: out (n, g) float64 = each of
 *       the g grids (g x size float32, row stride ``stride``) read back with the same bilinear weights.
 *   sqdist(x, d, nbr, k, l1, lo, hi, out)   for rows lo..hi: out[i, c] = the exact squared L2 (or, l1 true,
 *       L1) distance between the uint8 rows x[i] and x[nbr[i, c]]; x (n, d), nbr (n, k) int32, out (n, k) int64.
 * The GIL is released; callers split rows between threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *attract(PyObject *self, PyObject *args) {
    Py_buffer y, ptr, cols, w, out;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnw*", &y, &ptr, &cols, &w, &lo, &hi, &out)) return NULL;
    const double *Y = y.buf, *W = w.buf;
    const int64_t *P = ptr.buf;
    const int32_t *C = cols.buf;
    double *O = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = lo; i < hi; i++) {
        double xi = Y[2 * i], yi = Y[2 * i + 1], fx = 0.0, fy = 0.0;
        for (int64_t e = P[i]; e < P[i + 1]; e++) {
            int32_t j = C[e];
            double dx = xi - Y[2 * j], dy = yi - Y[2 * j + 1];
            double q = W[e] / (1.0 + dx * dx + dy * dy);
            fx += q * dx;
            fy += q * dy;
        }
        O[2 * i] = fx;
        O[2 * i + 1] = fy;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&y); PyBuffer_Release(&ptr); PyBuffer_Release(&cols); PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static inline void cell(double px, double py, double x0, double y0, double h, Py_ssize_t *a, Py_ssize_t *b,
                        double *fa, double *fb) {
    double u = (px - x0) / h, v = (py - y0) / h;
    Py_ssize_t ia = (Py_ssize_t)u, ib = (Py_ssize_t)v; /* u, v >= 0: the grid starts below every point */
    *a = ia; *b = ib; *fa = u - (double)ia; *fb = v - (double)ib;
}

static PyObject *spread(PyObject *self, PyObject *args) {
    Py_buffer y, rho;
    double x0, y0, h;
    Py_ssize_t nx, stride;
    if (!PyArg_ParseTuple(args, "y*dddnnw*", &y, &x0, &y0, &h, &nx, &stride, &rho)) return NULL;
    const double *Y = y.buf;
    double *R = rho.buf;
    Py_ssize_t n = y.len / (Py_ssize_t)(2 * sizeof(double));
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t a, b; double fa, fb;
        cell(Y[2 * i], Y[2 * i + 1], x0, y0, h, &a, &b, &fa, &fb);
        double *r = R + a * stride + b;
        r[0] += (1 - fa) * (1 - fb); r[1] += (1 - fa) * fb;
        r[stride] += fa * (1 - fb); r[stride + 1] += fa * fb;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&y); PyBuffer_Release(&rho);
    Py_RETURN_NONE;
}

static PyObject *read_back(PyObject *self, PyObject *args) {
    Py_buffer grids, y, out;
    Py_ssize_t g, size, stride, lo, hi;
    double x0, y0, h;
    if (!PyArg_ParseTuple(args, "y*nny*dddnnnw*", &grids, &g, &size, &y, &x0, &y0, &h, &stride, &lo, &hi, &out))
        return NULL;
    const float *G = grids.buf;
    const double *Y = y.buf;
    double *O = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = lo; i < hi; i++) {
        Py_ssize_t a, b; double fa, fb;
        cell(Y[2 * i], Y[2 * i + 1], x0, y0, h, &a, &b, &fa, &fb);
        for (Py_ssize_t k = 0; k < g; k++) {
            const float *r = G + k * size + a * stride + b;
            O[i * g + k] = (1 - fa) * ((1 - fb) * r[0] + fb * r[1]) + fa * ((1 - fb) * r[stride] + fb * r[stride + 1]);
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&grids); PyBuffer_Release(&y); PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *sqdist(PyObject *self, PyObject *args) {
    Py_buffer x, nbr, out;
    Py_ssize_t d, k, lo, hi;
    int l1;
    if (!PyArg_ParseTuple(args, "y*ny*npnnw*", &x, &d, &nbr, &k, &l1, &lo, &hi, &out)) return NULL;
    const uint8_t *X = x.buf;
    const int32_t *N = nbr.buf;
    int64_t *O = out.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = lo; i < hi; i++) {
        const uint8_t *a = X + i * d;
        for (Py_ssize_t c = 0; c < k; c++) {
            const uint8_t *b = X + (Py_ssize_t)N[i * k + c] * d;
            int32_t s = 0; /* at most 255^2 d: exact in int32 while d < 33,000 (the caller checks) */
            if (l1) {
                for (Py_ssize_t t = 0; t < d; t++) {
                    int32_t v = (int32_t)a[t] - (int32_t)b[t];
                    s += v < 0 ? -v : v;
                }
            } else {
                for (Py_ssize_t t = 0; t < d; t++) {
                    int32_t v = (int32_t)a[t] - (int32_t)b[t];
                    s += v * v;
                }
            }
            O[i * k + c] = s;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x); PyBuffer_Release(&nbr); PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sqdist", sqdist, METH_VARARGS, "exact squared L2 distances of uint8 rows to their listed neighbours"},
    {"attract", attract, METH_VARARGS, "t-SNE's attraction over a neighbour graph (CSR), rows lo..hi"},
    {"spread", spread, METH_VARARGS, "points onto a grid, bilinear weights"},
    {"read", read_back, METH_VARARGS, "grids read back at points, bilinear weights, points lo..hi"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_embed", NULL, -1, methods};

PyMODINIT_FUNC PyInit__embed(void) { return PyModule_Create(&module); }
