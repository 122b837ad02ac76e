/* Fused pointwise kernels of the coordinate-wise LSTM step (see fewshot/metalstm/native.py).
 *
 * Tensors are row-major [rows, columns] with a row stride ("ld"); a step's gates are the
 * rows (i, f, o, g) of one [4H, m] block. Every loop is written branch-free so that gcc
 * vectorises it (-O3 -march=native); exp, sigmoid and tanh are float32 polynomial
 * approximations (max error about 1 ulp of the result's scale, see the tests), and NaN
 * inputs give NaN outputs. No -ffast-math: it would let the compiler drop NaNs.
 */
#include <math.h>
#include <stdint.h>

#define CHUNK 2048

typedef union {
    float f;
    int32_t i;
} bits32;

/* exp(x): x = n ln2 + r with |r| <= ln2 / 2, a degree-7 polynomial for exp(r), 2^n from bits. */
static inline float fs_exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    bits32 scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

static inline float fs_sigmoid(float x) { return 1.0f / (1.0f + fs_exp(-x)); }

/* tanh: an odd polynomial near 0 (no cancellation), 1 - 2 / (exp(2|x|) + 1) elsewhere. */
static inline float fs_tanh(float x) {
    float a = fabsf(x);
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * x + x;
    float big = 1.0f - 2.0f / (fs_exp(2.0f * a) + 1.0f);
    big = x < 0.0f ? -big : big;
    return a < 0.625f ? small : big;
}

/* The work is split into (row, chunk of columns) tasks, shared by the OpenMP threads. */
#define FOR_TASKS(rows, m, threads)                                                   \
    int64_t n_chunks = ((m) + CHUNK - 1) / CHUNK;                                     \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                  \
    for (int64_t task = 0; task < (rows) * n_chunks; ++task)

/* One row of the forward; the flags are compile-time constants at every call site. Without
 * `keep` (no backward will need them) the activated gates and tanh(c) are not written back,
 * which saves most of the step's memory traffic. */
static inline void forward_row(int64_t start, int64_t stop, float *gi, float *gf, float *go, float *gg,
                               const float *cp, float *cr, float *hr, float *tr, const int has_c_prev,
                               const int keep) {
#pragma omp simd
    for (int64_t j = start; j < stop; ++j) {
        float i = fs_sigmoid(gi[j]), f = fs_sigmoid(gf[j]), o = fs_sigmoid(go[j]), g = fs_tanh(gg[j]);
        float cn = has_c_prev ? f * cp[j] + i * g : i * g, t = fs_tanh(cn);
        if (keep) gi[j] = i, gf[j] = f, go[j] = o, gg[j] = g, tr[j] = t;
        cr[j] = cn, hr[j] = o * t;
    }
}

/* In: gates = pre-activations [4H, m] (rows i, f, o, g), c_prev [H, m] or NULL (zeros).
 * Out: c = f * c_prev + i * g and h = o * tanh(c); unless tanh_c is NULL, also the gates
 * activated in place and tanh_c = tanh(c) (what the backward needs). */
void lstm_step_forward(int64_t hidden, int64_t m, int threads, float *gates, int64_t ld_gates,
                       const float *c_prev, int64_t ld_c_prev, float *c, int64_t ld_c, float *h, int64_t ld_h,
                       float *tanh_c, int64_t ld_tanh_c) {
    int variant = (c_prev != 0) * 2 + (tanh_c != 0);
    FOR_TASKS(hidden, m, threads) {
        int64_t row = task / n_chunks, start = (task % n_chunks) * CHUNK;
        int64_t stop = start + CHUNK < m ? start + CHUNK : m;
        float *gi = gates + row * ld_gates, *gf = gates + (hidden + row) * ld_gates;
        float *go = gates + (2 * hidden + row) * ld_gates, *gg = gates + (3 * hidden + row) * ld_gates;
        float *cr = c + row * ld_c, *hr = h + row * ld_h, *tr = tanh_c ? tanh_c + row * ld_tanh_c : 0;
        const float *cp = c_prev ? c_prev + row * ld_c_prev : 0;
#define ROW(a, b) forward_row(start, stop, gi, gf, go, gg, cp, cr, hr, tr, a, b)
        switch (variant) {
            case 0: ROW(0, 0); break;
            case 1: ROW(0, 1); break;
            case 2: ROW(1, 0); break;
            default: ROW(1, 1); break;
        }
#undef ROW
    }
}

/* One row of the backward; the flags are compile-time constants at every call site, so each
 * variant is its own branch-free, vectorised loop. */
static inline void backward_row(int64_t start, int64_t stop, const float *gi, const float *gf, const float *go,
                                const float *gg, const float *tr, const float *cp, const float *dhr,
                                const float *dnr, float *di, float *df, float *dout, float *dg, float *dcp,
                                const int has_c_prev, const int has_dc_next, const int has_dc_prev) {
#pragma omp simd
    for (int64_t j = start; j < stop; ++j) {
        float i = gi[j], f = gf[j], o = go[j], g = gg[j], t = tr[j], dhj = dhr[j];
        float dc = dhj * o * (1.0f - t * t);
        if (has_dc_next) dc += dnr[j];
        di[j] = dc * g * i * (1.0f - i);
        df[j] = has_c_prev ? dc * cp[j] * f * (1.0f - f) : 0.0f;
        dout[j] = dhj * t * o * (1.0f - o);
        dg[j] = dc * i * (1.0f - g * g);
        if (has_dc_prev) dcp[j] = dc * f;
    }
}

/* In: activated gates [4H, m], tanh_c [H, m], c_prev [H, m] or NULL (zeros), dh [H, m],
 * dc_next [H, m] or NULL (zeros). Out: d_pre [4H, m] (gradient of the pre-activations) and,
 * unless NULL, dc_prev = dc * f. */
void lstm_step_backward(int64_t hidden, int64_t m, int threads, const float *gates, int64_t ld_gates,
                        const float *tanh_c, int64_t ld_tanh_c, const float *c_prev, int64_t ld_c_prev,
                        const float *dh, int64_t ld_dh, const float *dc_next, int64_t ld_dc_next, float *d_pre,
                        int64_t ld_d_pre, float *dc_prev, int64_t ld_dc_prev) {
    int variant = (c_prev != 0) * 4 + (dc_next != 0) * 2 + (dc_prev != 0);
    FOR_TASKS(hidden, m, threads) {
        int64_t row = task / n_chunks, start = (task % n_chunks) * CHUNK;
        int64_t stop = start + CHUNK < m ? start + CHUNK : m;
        const float *gi = gates + row * ld_gates, *gf = gates + (hidden + row) * ld_gates;
        const float *go = gates + (2 * hidden + row) * ld_gates, *gg = gates + (3 * hidden + row) * ld_gates;
        const float *tr = tanh_c + row * ld_tanh_c, *dhr = dh + row * ld_dh;
        const float *cp = c_prev ? c_prev + row * ld_c_prev : 0;
        const float *dnr = dc_next ? dc_next + row * ld_dc_next : 0;
        float *di = d_pre + row * ld_d_pre, *df = d_pre + (hidden + row) * ld_d_pre;
        float *dout = d_pre + (2 * hidden + row) * ld_d_pre, *dg = d_pre + (3 * hidden + row) * ld_d_pre;
        float *dcp = dc_prev ? dc_prev + row * ld_dc_prev : 0;
#define ROW(a, b, c) backward_row(start, stop, gi, gf, go, gg, tr, cp, dhr, dnr, di, df, dout, dg, dcp, a, b, c)
        switch (variant) {
            case 0: ROW(0, 0, 0); break;
            case 1: ROW(0, 0, 1); break;
            case 2: ROW(0, 1, 0); break;
            case 3: ROW(0, 1, 1); break;
            case 4: ROW(1, 0, 0); break;
            case 5: ROW(1, 0, 1); break;
            case 6: ROW(1, 1, 0); break;
            default: ROW(1, 1, 1); break;
        }
#undef ROW
    }
}

/* Elementwise sigmoid and tanh over n values (for the accuracy tests). */
void fs_sigmoid_array(int64_t n, const float *x, float *y) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = fs_sigmoid(x[j]);
}

void fs_tanh_array(int64_t n, const float *x, float *y) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = fs_tanh(x[j]);
}

/* ---- Layer 2, the Meta-Learner cell (fewshot/metalstm/cell.py), per coordinate j:
 *   pre_k = b_k + sum_r W[k, r] h[r, j] + W[k, H] theta[j] + W[k, H + 1] prev_k[j]  (k = i, f)
 *   i, f = sigmoid(pre);  theta_new = f * theta - i * grad;  state_k = pre_k or gate_k
 * W is [2, H + 2] row-major, h is [H, n] with row stride ld_h. Work is split into chunks of
 * coordinates; the backward writes each chunk's weight-gradient sums into partials
 * [n_chunks, 2, H + 3] (W then b), which the caller adds up. */
#define CELL_CHUNK 1024

void cell_forward(int64_t hidden, int64_t n, int threads, const float *h, int64_t ld_h, const float *theta,
                  const float *grad, const float *i_prev, const float *f_prev, const float *weight,
                  const float *bias, int feed_preactivation, float *theta_out, float *i_out, float *f_out,
                  float *state_i, float *state_f) {
    int64_t n_chunks = (n + CELL_CHUNK - 1) / CELL_CHUNK, width = hidden + 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
        int64_t start = chunk * CELL_CHUNK, stop = start + CELL_CHUNK < n ? start + CELL_CHUNK : n;
        float pre_i[CELL_CHUNK], pre_f[CELL_CHUNK];
        for (int64_t j = start; j < stop; ++j) pre_i[j - start] = bias[0], pre_f[j - start] = bias[1];
        for (int64_t r = 0; r < hidden; ++r) {
            const float *hr = h + r * ld_h;
            float wi = weight[r], wf = weight[width + r];
#pragma omp simd
            for (int64_t j = start; j < stop; ++j) {
                pre_i[j - start] += wi * hr[j];
                pre_f[j - start] += wf * hr[j];
            }
        }
        float wi_t = weight[hidden], wi_p = weight[hidden + 1];
        float wf_t = weight[width + hidden], wf_p = weight[width + hidden + 1];
#pragma omp simd
        for (int64_t j = start; j < stop; ++j) {
            float pi = pre_i[j - start] + wi_t * theta[j] + wi_p * i_prev[j];
            float pf = pre_f[j - start] + wf_t * theta[j] + wf_p * f_prev[j];
            float i = fs_sigmoid(pi), f = fs_sigmoid(pf);
            theta_out[j] = f * theta[j] - i * grad[j];
            i_out[j] = i, f_out[j] = f;
            state_i[j] = feed_preactivation ? pi : i;
            state_f[j] = feed_preactivation ? pf : f;
        }
    }
}

void cell_backward(int64_t hidden, int64_t n, int threads, const float *h, int64_t ld_h, const float *theta,
                   const float *grad, const float *i_prev, const float *f_prev, const float *i_gate,
                   const float *f_gate, const float *weight, int feed_preactivation, const float *d_theta,
                   const float *d_i, const float *d_f, const float *d_state_i, const float *d_state_f, float *d_h,
                   int64_t ld_d_h, float *d_theta_prev, float *d_i_prev, float *d_f_prev, float *partials) {
    int64_t n_chunks = (n + CELL_CHUNK - 1) / CELL_CHUNK, width = hidden + 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
        int64_t start = chunk * CELL_CHUNK, stop = start + CELL_CHUNK < n ? start + CELL_CHUNK : n;
        float dp_i[CELL_CHUNK], dp_f[CELL_CHUNK];
        float *sums = partials + chunk * 2 * (hidden + 3);
        float s_ti = 0, s_tf = 0, s_pi = 0, s_pf = 0, s_bi = 0, s_bf = 0;
        float wi_t = weight[hidden], wi_p = weight[hidden + 1];
        float wf_t = weight[width + hidden], wf_p = weight[width + hidden + 1];
#pragma omp simd reduction(+ : s_ti, s_tf, s_pi, s_pf, s_bi, s_bf)
        for (int64_t j = start; j < stop; ++j) {
            float i = i_gate[j], f = f_gate[j];
            float gi = d_i[j] - d_theta[j] * grad[j], gf = d_f[j] + d_theta[j] * theta[j];
            if (!feed_preactivation) gi += d_state_i[j], gf += d_state_f[j];
            float pi = gi * i * (1.0f - i), pf = gf * f * (1.0f - f);
            if (feed_preactivation) pi += d_state_i[j], pf += d_state_f[j];
            dp_i[j - start] = pi, dp_f[j - start] = pf;
            d_theta_prev[j] = d_theta[j] * f + wi_t * pi + wf_t * pf;
            d_i_prev[j] = wi_p * pi;
            d_f_prev[j] = wf_p * pf;
            s_ti += pi * theta[j], s_tf += pf * theta[j];
            s_pi += pi * i_prev[j], s_pf += pf * f_prev[j];
            s_bi += pi, s_bf += pf;
        }
        for (int64_t r = 0; r < hidden; ++r) {
            const float *hr = h + r * ld_h;
            float *dhr = d_h + r * ld_d_h;
            float wi = weight[r], wf = weight[width + r], s_i = 0, s_f = 0;
#pragma omp simd reduction(+ : s_i, s_f)
            for (int64_t j = start; j < stop; ++j) {
                float a = dp_i[j - start], b = dp_f[j - start];
                dhr[j] = wi * a + wf * b;
                s_i += a * hr[j], s_f += b * hr[j];
            }
            sums[r] = s_i, sums[hidden + 3 + r] = s_f;
        }
        sums[hidden] = s_ti, sums[hidden + 1] = s_pi, sums[hidden + 2] = s_bi;
        sums[hidden + 3 + hidden] = s_tf, sums[hidden + 3 + hidden + 1] = s_pf, sums[hidden + 3 + hidden + 2] = s_bf;
    }
}
