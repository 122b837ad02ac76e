/* Fused pointwise kernels of the coordinate-wise LSTM step (see fewshot/metalstm/native.py).
 *
 * Tensors are row-major [rows, columns] with a row stride ("ld"); a step's gates are the
 * rows (i, f, o, g) of one [4H, m] block. Every loop is written branch-free so that gcc
 * vectorises it (-O3 -march=native); exp, sigmoid and tanh are float32 polynomial
 * approximations (max error about 1 ulp of the result's scale, see the tests), and NaN
 * inputs give NaN outputs. No -ffast-math: it would let the compiler drop NaNs; only
 * -fno-trapping-math, so that gcc may compute both sides of a select and vectorise it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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

#if defined(__AVX512F__)
#include <immintrin.h>
/* The same exp, sigmoid and tanh on 16 lanes, with AVX-512's scalef for 2^n and a reciprocal
 * estimate refined by one Newton step (relative error about 2^-28) instead of a division, which
 * costs several times more. Constants first in max/min: then a NaN in x passes through. */
static inline __m512 v_exp(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 v_reciprocal(__m512 d) {
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

static inline __m512 v_sigmoid(__m512 x) {
    return v_reciprocal(_mm512_add_ps(_mm512_set1_ps(1.0f), v_exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

static inline __m512 v_tanh(__m512 x) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 a = _mm512_andnot_ps(sign, x), z = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
    __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    __m512 e = _mm512_add_ps(v_exp(_mm512_add_ps(a, a)), _mm512_set1_ps(1.0f));
    __m512 big = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), v_reciprocal(e), _mm512_set1_ps(1.0f));
    big = _mm512_or_ps(big, _mm512_and_ps(sign, x));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(0.625f), _CMP_LT_OQ), big, small);
}

#endif

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
#if defined(__AVX512F__)
    for (int64_t j = start; j < stop; j += 16) {
        __mmask16 mask = stop - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (stop - j)) - 1u);
        __m512 i = v_sigmoid(_mm512_maskz_loadu_ps(mask, gi + j)), f = v_sigmoid(_mm512_maskz_loadu_ps(mask, gf + j));
        __m512 o = v_sigmoid(_mm512_maskz_loadu_ps(mask, go + j)), g = v_tanh(_mm512_maskz_loadu_ps(mask, gg + j));
        __m512 cn = _mm512_mul_ps(i, g);
        if (has_c_prev) cn = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(mask, cp + j), cn);
        __m512 t = v_tanh(cn);
        if (keep) {
            _mm512_mask_storeu_ps(gi + j, mask, i), _mm512_mask_storeu_ps(gf + j, mask, f);
            _mm512_mask_storeu_ps(go + j, mask, o), _mm512_mask_storeu_ps(gg + j, mask, g);
            _mm512_mask_storeu_ps(tr + j, mask, t);
        }
        _mm512_mask_storeu_ps(cr + j, mask, cn), _mm512_mask_storeu_ps(hr + j, mask, _mm512_mul_ps(o, t));
    }
    return;
#endif
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

/* Elementwise sigmoid and tanh over n values, by the functions the LSTM forward uses here (for
 * the accuracy tests). */
#if defined(__AVX512F__)
#define ARRAY_OF(f, vf_)                                                                          \
    for (int64_t j = 0; j < n; j += 16) {                                                         \
        __mmask16 mask = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1u);      \
        _mm512_mask_storeu_ps(y + j, mask, vf_(_mm512_maskz_loadu_ps(mask, x + j)));              \
    }
#else
#define ARRAY_OF(f, vf_)  \
    _Pragma("omp simd") for (int64_t j = 0; j < n; ++j) y[j] = f(x[j]);
#endif

void fs_sigmoid_array(int64_t n, const float *x, float *y) { ARRAY_OF(fs_sigmoid, v_sigmoid) }

void fs_tanh_array(int64_t n, const float *x, float *y) { ARRAY_OF(fs_tanh, v_tanh) }

/* ---- The gradient preprocessing of fewshot/metalstm/preprocess.py, per coordinate:
 *   x -> (log|x| / p, sign x) if |x| >= e^-p, else (-1, e^p x)
 * into the rows of out [2, n] (row stride ld_out). NaN gives (-1, NaN), as the torch code. */

/* log(x) for positive normal x or +inf: x = 2^e m with m in [sqrt(1/2), sqrt(2)), and
 * log(m) = f - f^2 / 2 + f^3 Q(f), f = m - 1, Q a degree-7 least-squares fit (error < 4e-8). */
static inline float fs_log(float x) {
    bits32 b;
    b.f = x;
    int32_t e = ((b.i >> 23) & 0xff) - 127;
    b.i = (b.i & 0x007fffff) | 0x3f800000;
    float m = b.f;
    int32_t big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    e += big;
    float f = m - 1.0f, z = f * f;
    float q = -7.3351889061e-02f;
    q = q * f + 1.2697940167e-01f;
    q = q * f - 1.3257158892e-01f;
    q = q * f + 1.4220441174e-01f;
    q = q * f - 1.6613944425e-01f;
    q = q * f + 1.9999745290e-01f;
    q = q * f - 2.5001104263e-01f;
    q = q * f + 3.3333363411e-01f;
    float y = f - 0.5f * z + z * f * q;
    float r = ((float)e * -2.12194440e-4f + y) + (float)e * 0.693359375f;
    return x > 3.4028235e38f ? x : r;
}

void preprocess_gradient(int64_t n, int threads, float p, const float *x, float *out, int64_t ld_out) {
    const float threshold = expf(-p), scale = expf(p), inv_p = 1.0f / p;
    int64_t n_chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
        int64_t start = chunk * CHUNK, stop = start + CHUNK < n ? start + CHUNK : n;
#pragma omp simd
        for (int64_t j = start; j < stop; ++j) {
            float v = x[j], a = fabsf(v);
            float log_part = fs_log(a >= threshold ? a : 1.0f) * inv_p;
            float low = v < -threshold ? -threshold : v, clamped = low > threshold ? threshold : low;
            out[j] = a >= threshold ? log_part : -1.0f;
            out[ld_out + j] = a >= threshold ? copysignf(1.0f, v) : clamped * scale;
        }
    }
}

/* ---- Mean and population std of each segment [offsets[s], offsets[s + 1]) of each row of
 * x [rows, n] (row stride ld), into out [rows, 2, n_seg] (means, then stds); double sums, two
 * passes (no cancellation for gates near 1 with a tiny spread). */
void segment_moments(int64_t rows, int64_t n_seg, int threads, const float *x, int64_t ld, const int64_t *offsets,
                     float *out) {
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (int64_t task = 0; task < rows * n_seg; ++task) {
        int64_t r = task / n_seg, s = task % n_seg, start = offsets[s], stop = offsets[s + 1];
        const float *row = x + r * ld;
        double sum = 0.0, squares = 0.0, count = (double)(stop - start);
#pragma omp simd reduction(+ : sum)
        for (int64_t j = start; j < stop; ++j) sum += row[j];
        double mean = sum / count;
#pragma omp simd reduction(+ : squares)
        for (int64_t j = start; j < stop; ++j) squares += (row[j] - mean) * (row[j] - mean);
        out[(r * 2) * n_seg + s] = (float)mean;
        out[(r * 2 + 1) * n_seg + s] = (float)sqrt(squares / count);
    }
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

/* ---- Inference: the whole forward step in one pass, the matrix product and the activations
 * tile by tile of TILE coordinates, so that the [4H, m] pre-activations never leave the
 * registers and nothing but c and h is written.
 *   pre = W [x; h_prev; 1],  W = [W_x, W_h, b]: [4H, K + 1] row-major, K = F (+ H)
 * x [F, m] (row stride ld_x); h_prev [H, m] or NULL (the first step: then K = F); c_prev [H, m]
 * or NULL. Each unit's four gate rows are accumulated together, NV vectors per gate, so every
 * input vector loaded from the tile serves 4 * NV multiply-adds. With AVX-512 the activations
 * run on those registers too (below); elsewhere each unit's pre-activations go through a small
 * buffer and the scalar functions, a slower path that the caller avoids (see
 * lstm_fused_forward_vectorised). */
#if defined(__AVX512F__)
#define VEC 16
#define NV 4
#else
#define VEC 8
#define NV 2
#endif
#define TILE (VEC * NV)

typedef float vf __attribute__((vector_size(VEC * sizeof(float))));

/* One chunk of CHUNK_IN coordinates at a time: its input and c_prev rows are copied into
 * buffers first, and c and h are written back row by row at the end, so that memory is read and
 * written in long runs per row (the prefetchers follow a few long streams, not 80 short ones);
 * in between, tiles of TILE coordinates work from those buffers (zero-padded past the end). */
#define CHUNK_IN 256

/* Copy `valid` values of a row into a chunk buffer and zero the rest (NULL row: all zeros). */
static inline void load_row(float *buffer, const float *row, int64_t valid) {
    if (row) __builtin_memcpy(buffer, row, valid * sizeof(float));
    for (int64_t j = row ? valid : 0; j < CHUNK_IN; ++j) buffer[j] = 0.0f;
}

/* The chunk's [x; h_prev] rows (k_in of them) into `in`, from coordinate `start` on. */
static inline void load_inputs(vf *in, const float *x, int64_t ld_x, const float *h_prev, int64_t ld_h_prev,
                               int64_t n_x, int64_t k_in, int64_t start, int64_t valid) {
    for (int64_t k = 0; k < k_in; ++k) {
        const float *row = k < n_x ? x + k * ld_x : h_prev + (k - n_x) * ld_h_prev;
        load_row((float *)(in + k * (CHUNK_IN / VEC)), row + start, valid);
    }
}

/* Unit u's four gate pre-activations (rows u, H + u, 2H + u, 3H + u of W [x; h; 1]) for the tile
 * of NV vectors that starts at vector v0 of the chunk buffer `in`. */
static inline void unit_preactivations(const float *weight, int64_t ld_w, int64_t hidden, int64_t k_in, int64_t u,
                                       const vf *in, int64_t v0, vf acc[4][NV]) {
    const float *w[4] = {weight + u * ld_w, weight + (hidden + u) * ld_w, weight + (2 * hidden + u) * ld_w,
                         weight + (3 * hidden + u) * ld_w};
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[q][v] = (vf){0} + w[q][k_in];
    for (int64_t k = 0; k < k_in; ++k) {
        const vf *row = in + k * (CHUNK_IN / VEC) + v0;
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
            const float wk = w[q][k];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[q][v] += wk * row[v];
        }
    }
}

#if defined(__AVX512F__)
static inline void unit_outputs(vf acc[4][NV], const float *cp, float *cr, float *hr) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        __m512 i = v_sigmoid((__m512)acc[0][v]), f = v_sigmoid((__m512)acc[1][v]);
        __m512 o = v_sigmoid((__m512)acc[2][v]), g = v_tanh((__m512)acc[3][v]);
        __m512 cn = _mm512_fmadd_ps(f, _mm512_load_ps(cp + v * VEC), _mm512_mul_ps(i, g));
        _mm512_store_ps(cr + v * VEC, cn);
        _mm512_store_ps(hr + v * VEC, _mm512_mul_ps(o, v_tanh(cn)));
    }
}
#else
static inline void unit_outputs(vf acc[4][NV], const float *cp, float *cr, float *hr) {
    float pre[4][TILE];
    for (int q = 0; q < 4; ++q) __builtin_memcpy(pre[q], acc[q], sizeof(pre[q]));
    for (int64_t j = 0; j < TILE; ++j) {
        float i = fs_sigmoid(pre[0][j]), f = fs_sigmoid(pre[1][j]), o = fs_sigmoid(pre[2][j]);
        float cn = i * fs_tanh(pre[3][j]) + f * cp[j];
        cr[j] = cn, hr[j] = o * fs_tanh(cn);
    }
}
#endif

/* Returns 0, or 1 if a thread's buffers could not be allocated (c and h are incomplete then). */
int lstm_fused_forward(int64_t n_x, int64_t hidden, int64_t m, int threads, const float *weight, const float *x,
                       int64_t ld_x, const float *h_prev, int64_t ld_h_prev, const float *c_prev,
                       int64_t ld_c_prev, float *c, int64_t ld_c, float *h, int64_t ld_h) {
    const int64_t k_in = n_x + (h_prev ? hidden : 0), ld_w = k_in + 1;
    const int64_t n_chunks = (m + CHUNK_IN - 1) / CHUNK_IN;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        vf *in = aligned_alloc(64, k_in * CHUNK_IN * sizeof(float));
        float *cp = aligned_alloc(64, 3 * hidden * CHUNK_IN * sizeof(float));
        float *cr = cp + hidden * CHUNK_IN, *hr = cr + hidden * CHUNK_IN;
        failed = !in || !cp;
#pragma omp for schedule(static)
        for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
            if (!in || !cp) continue;
            const int64_t start = chunk * CHUNK_IN, valid = start + CHUNK_IN < m ? CHUNK_IN : m - start;
            load_inputs(in, x, ld_x, h_prev, ld_h_prev, n_x, k_in, start, valid);
            for (int64_t u = 0; u < hidden; ++u)
                load_row(cp + u * CHUNK_IN, c_prev ? c_prev + u * ld_c_prev + start : 0, valid);
            for (int64_t t0 = 0; t0 < valid; t0 += TILE) {
                const int64_t v0 = t0 / VEC;
                for (int64_t u = 0; u < hidden; ++u) {
                    vf acc[4][NV];
                    unit_preactivations(weight, ld_w, hidden, k_in, u, in, v0, acc);
                    const int64_t at = u * CHUNK_IN + t0;
                    unit_outputs(acc, cp + at, cr + at, hr + at);
                }
            }
            for (int64_t u = 0; u < hidden; ++u) {
                __builtin_memcpy(c + u * ld_c + start, cr + u * CHUNK_IN, valid * sizeof(float));
                __builtin_memcpy(h + u * ld_h + start, hr + u * CHUNK_IN, valid * sizeof(float));
            }
        }
        free(in);
        free(cp);
    }
    return failed;
}

/* ---- Training backward of one step in one pass, recomputing the gates per tile from the step's
 * inputs (so that the forward keeps nothing but those inputs): the same matrix product and
 * activations as lstm_fused_forward, then the step's backward.
 * In: weight, x, h_prev, c_prev as for lstm_fused_forward; dh [H, m]; dc_next [H, m] or NULL.
 * Out: d_pre [4H, m] (gradient of the pre-activations, rows i, f, o, g), dc_prev [H, m] unless
 * NULL, and the gathered inputs [K + 1, m] = [x; h_prev; 1] (for the weight gradient). */
#if defined(__AVX512F__)
static inline void unit_backward(vf acc[4][NV], const float *cp, const float *dhr, const float *dnr, float *di,
                                 float *df, float *dout, float *dg, float *dcp) {
    const __m512 one = _mm512_set1_ps(1.0f);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
        __m512 i = v_sigmoid((__m512)acc[0][v]), f = v_sigmoid((__m512)acc[1][v]);
        __m512 o = v_sigmoid((__m512)acc[2][v]), g = v_tanh((__m512)acc[3][v]);
        __m512 c_prev = _mm512_load_ps(cp + v * VEC), dh = _mm512_load_ps(dhr + v * VEC);
        __m512 t = v_tanh(_mm512_fmadd_ps(f, c_prev, _mm512_mul_ps(i, g)));
        __m512 dc = _mm512_fmadd_ps(_mm512_mul_ps(dh, o), _mm512_fnmadd_ps(t, t, one), _mm512_load_ps(dnr + v * VEC));
        _mm512_store_ps(di + v * VEC, _mm512_mul_ps(_mm512_mul_ps(dc, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i))));
        _mm512_store_ps(df + v * VEC,
                        _mm512_mul_ps(_mm512_mul_ps(dc, c_prev), _mm512_mul_ps(f, _mm512_sub_ps(one, f))));
        _mm512_store_ps(dout + v * VEC, _mm512_mul_ps(_mm512_mul_ps(dh, t), _mm512_mul_ps(o, _mm512_sub_ps(one, o))));
        _mm512_store_ps(dg + v * VEC, _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one)));
        _mm512_store_ps(dcp + v * VEC, _mm512_mul_ps(dc, f));
    }
}
#else
static inline void unit_backward(vf acc[4][NV], const float *cp, const float *dhr, const float *dnr, float *di,
                                 float *df, float *dout, float *dg, float *dcp) {
    float pre[4][TILE];
    for (int q = 0; q < 4; ++q) __builtin_memcpy(pre[q], acc[q], sizeof(pre[q]));
    for (int64_t j = 0; j < TILE; ++j) {
        float i = fs_sigmoid(pre[0][j]), f = fs_sigmoid(pre[1][j]), o = fs_sigmoid(pre[2][j]);
        float g = fs_tanh(pre[3][j]), t = fs_tanh(f * cp[j] + i * g), dh = dhr[j];
        float dc = dh * o * (1.0f - t * t) + dnr[j];
        di[j] = dc * g * i * (1.0f - i), df[j] = dc * cp[j] * f * (1.0f - f);
        dout[j] = dh * t * o * (1.0f - o), dg[j] = dc * i * (1.0f - g * g), dcp[j] = dc * f;
    }
}
#endif

/* Returns 0, or 1 if a thread's buffers could not be allocated (the outputs are incomplete then). */
int lstm_fused_backward(int64_t n_x, int64_t hidden, int64_t m, int threads, const float *weight, const float *x,
                        int64_t ld_x, const float *h_prev, int64_t ld_h_prev, const float *c_prev,
                        int64_t ld_c_prev, const float *dh, int64_t ld_dh, const float *dc_next,
                        int64_t ld_dc_next, float *d_pre, int64_t ld_d_pre, float *dc_prev, int64_t ld_dc_prev,
                        float *inputs, int64_t ld_inputs) {
    const int64_t k_in = n_x + (h_prev ? hidden : 0), ld_w = k_in + 1;
    const int64_t n_chunks = (m + CHUNK_IN - 1) / CHUNK_IN;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        vf *in = aligned_alloc(64, k_in * CHUNK_IN * sizeof(float));
        /* c_prev, dh, dc_next, then the outputs dc_prev and d_pre (4H rows) */
        float *cp = aligned_alloc(64, 8 * hidden * CHUNK_IN * sizeof(float));
        float *dhb = cp + hidden * CHUNK_IN, *dnb = dhb + hidden * CHUNK_IN, *dcpb = dnb + hidden * CHUNK_IN;
        float *dpb = dcpb + hidden * CHUNK_IN;
        failed = !in || !cp;
#pragma omp for schedule(static)
        for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
            if (!in || !cp) continue;
            const int64_t start = chunk * CHUNK_IN, valid = start + CHUNK_IN < m ? CHUNK_IN : m - start;
            load_inputs(in, x, ld_x, h_prev, ld_h_prev, n_x, k_in, start, valid);
            for (int64_t k = 0; k < k_in; ++k)  /* [x; h_prev; 1] for the weight gradient */
                __builtin_memcpy(inputs + k * ld_inputs + start, in + k * (CHUNK_IN / VEC), valid * sizeof(float));
            for (int64_t j = 0; j < valid; ++j) inputs[k_in * ld_inputs + start + j] = 1.0f;
            for (int64_t u = 0; u < hidden; ++u) {
                load_row(cp + u * CHUNK_IN, c_prev ? c_prev + u * ld_c_prev + start : 0, valid);
                load_row(dhb + u * CHUNK_IN, dh + u * ld_dh + start, valid);
                load_row(dnb + u * CHUNK_IN, dc_next ? dc_next + u * ld_dc_next + start : 0, valid);
            }
            for (int64_t t0 = 0; t0 < valid; t0 += TILE) {
                const int64_t v0 = t0 / VEC;
                for (int64_t u = 0; u < hidden; ++u) {
                    vf acc[4][NV];
                    unit_preactivations(weight, ld_w, hidden, k_in, u, in, v0, acc);
                    const int64_t at = u * CHUNK_IN + t0;
                    unit_backward(acc, cp + at, dhb + at, dnb + at, dpb + at, dpb + hidden * CHUNK_IN + at,
                                  dpb + 2 * hidden * CHUNK_IN + at, dpb + 3 * hidden * CHUNK_IN + at, dcpb + at);
                }
            }
            for (int64_t r = 0; r < 4 * hidden; ++r)
                __builtin_memcpy(d_pre + r * ld_d_pre + start, dpb + r * CHUNK_IN, valid * sizeof(float));
            if (dc_prev)
                for (int64_t u = 0; u < hidden; ++u)
                    __builtin_memcpy(dc_prev + u * ld_dc_prev + start, dcpb + u * CHUNK_IN, valid * sizeof(float));
        }
        free(in);
        free(cp);
    }
    return failed;
}

/* Whether lstm_fused_forward was built with its AVX-512 path; elsewhere the separate matrix
 * product + lstm_step_forward is faster, and the caller uses that. */
int lstm_fused_forward_vectorised(void) {
#if defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}
