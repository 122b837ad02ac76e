// CPU kernels of the Meta-Learner LSTM, a Python extension module (functions lstm_step_forward,
// lstm_step_backward, meta_cell_forward, meta_cell_backward, and the step's pointwise maths
// lstm_gates_forward, lstm_gates_backward), not torch operators: the operators are
// fewshot::lstm_step and fewshot::meta_cell_step (and their backwards), whose CPU kernels call
// these; built on first use by fewshot/nn/native.py.
//
// Tensors are coordinate-last matrices [rows, m] whose rows are contiguous (stride(1) == 1, any
// row stride); a step's gates are the rows (i, f, o, g) of one [4H, m] block. Loops run on
// torch's thread pool (at::parallel_for) over blocks of columns (a task each), and the maths on
// at::vec::Vectorized<float>, whose instruction set is chosen at build time by CPU_CAPABILITY_*
// (scalar without one). NaN inputs give NaN outputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace {

using at::Tensor;
using Vec = at::vec::Vectorized<float>;

constexpr int64_t kChunk = 2048;      // columns per task of the LSTM kernels
constexpr int64_t kCellChunk = 1024;  // coordinates per task of the cell kernels

// exp, sigmoid and tanh as float32 polynomials on at::vec's operations (max error about 1 ulp of
// the result's scale, see the tests), the same on every instruction set; NaN in, NaN out.

// p * 2^n for integral n in [-126, 127]: 2^n built from its bits; AVX-512 has an instruction.
C10_ALWAYS_INLINE Vec times_pow2(const Vec& p, const Vec& n) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_scalef_ps(p, n);
#else
  using Int = at::vec::Vectorized<int32_t>;
  const Int bits = (at::vec::convert_to_int_of_same_size(n) + Int(127)) << Int(23);
  return p * at::vec::cast<float>(bits);
#endif
}

// exp(x): x = n ln2 + r with |r| <= ln2 / 2, a degree-7 polynomial for exp(r), 2^n from bits.
C10_ALWAYS_INLINE Vec exp_poly(Vec x) {
  x = at::vec::clamp(x, Vec(-87.0f), Vec(88.0f));
  const Vec n = (x * Vec(1.44269504088896341f)).round();
  Vec r = at::vec::fnmadd(n, Vec(0.693359375f), x);
  r = at::vec::fmadd(n, Vec(2.12194440e-4f), r);
  Vec p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, Vec(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, Vec(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, Vec(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, Vec(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, Vec(5.0000001201e-1f));
  p = at::vec::fmadd(p, r * r, r) + Vec(1.0f);
  return times_pow2(p, n);
}

// 1 / d for d in [1, 2^126), several times cheaper than a vector division; NaN stays NaN. A
// first guess (AVX-512's 14-bit estimate, elsewhere from the float's bits), then Newton steps
// r + r (1 - d r) to a relative error below 1e-7 (in this form 1 / 1 comes out exactly 1).
C10_ALWAYS_INLINE Vec reciprocal(const Vec& d) {
#if defined(CPU_CAPABILITY_AVX512)
  const Vec r = _mm512_rcp14_ps(d);
  return at::vec::fmadd(r, at::vec::fnmadd(d, r, Vec(1.0f)), r);
#else
  using Int = at::vec::Vectorized<int32_t>;
  Vec r = at::vec::cast<float>(Int(0x7EF311C7) - at::vec::cast<int32_t>(d));
  for (int k = 0; k < 3; ++k) r = at::vec::fmadd(r, at::vec::fnmadd(d, r, Vec(1.0f)), r);
  return r;
#endif
}

// 1 / (1 + exp(-x)), with -x at most 87 so that the sum stays in reciprocal's range (below
// x = -87 the result, under 2e-38, is as good as zero).
C10_ALWAYS_INLINE Vec sigmoid(const Vec& x) {
  return reciprocal(Vec(1.0f) + exp_poly(at::vec::clamp_max(x.neg(), Vec(87.0f))));
}

// tanh: an odd polynomial near 0 (no cancellation), 1 - 2 / (exp(2|x|) + 1) elsewhere.
C10_ALWAYS_INLINE Vec tanh_poly(const Vec& x) {
  const Vec a = x.abs(), z = x * x;
  Vec p(-5.70498872745e-3f);
  p = at::vec::fmadd(p, z, Vec(2.06390887954e-2f));
  p = at::vec::fmadd(p, z, Vec(-5.37397155531e-2f));
  p = at::vec::fmadd(p, z, Vec(1.33314422036e-1f));
  p = at::vec::fmadd(p, z, Vec(-3.33332819422e-1f));
  const Vec small = at::vec::fmadd(p * z, x, x);
  const Vec e = exp_poly(at::vec::clamp_max(a + a, Vec(40.0f)));  // tanh(20) is 1 in float32
  Vec big = at::vec::fnmadd(Vec(2.0f), reciprocal(e + Vec(1.0f)), Vec(1.0f));
  big = big | (x & Vec(-0.0f));  // big >= 0: take x's sign
  return Vec::blendv(big, small, a < Vec(0.625f));
}

// ---- Input checks: every tensor float32 on the CPU, 2-D of the expected shape, rows contiguous.

void check_matrix(const Tensor& t, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, " must be [", rows, ", ", cols,
              "], got ", t.sizes());
  TORCH_CHECK(cols <= 1 || t.stride(1) == 1, name, " must have contiguous rows (stride(1) == 1), got strides ",
              t.strides(), "; pass .contiguous()");
  TORCH_CHECK(rows <= 1 || t.stride(0) >= cols, name, " has overlapping rows (strides ", t.strides(), ")");
}

void check_vector(const Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must be [", n, "], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous; pass .contiguous()");
}

const float* row_or_null(const std::optional<Tensor>& t, int64_t row) {
  return t.has_value() ? t->const_data_ptr<float>() + row * t->stride(0) : nullptr;
}

float* mutable_row_or_null(const std::optional<Tensor>& t, int64_t row) {
  return t.has_value() ? t->mutable_data_ptr<float>() + row * t->stride(0) : nullptr;
}

// Run body(row, start, stop) for every (row, chunk of kChunk columns) task, on torch's threads.
template <typename Body>
void for_tasks(int64_t rows, int64_t m, const Body& body) {
  const int64_t n_chunks = (m + kChunk - 1) / kChunk;
  at::parallel_for(0, rows * n_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / n_chunks, start = (task % n_chunks) * kChunk;
      body(row, start, std::min(start + kChunk, m));
    }
  });
}

// f(j, count) for the vectors of columns start .. stop: full ones (count a constant, so the
// loads and stores inline unmasked), then the partial last one.
template <typename F>
C10_ALWAYS_INLINE void for_vectors(int64_t start, int64_t stop, const F& f) {
  int64_t j = start;
  for (; j + Vec::size() <= stop; j += Vec::size()) f(j, Vec::size());
  if (j < stop) f(j, stop - j);
}

// ---- The coordinate-wise LSTM step.

// One row of the forward; without `keep` (no backward will need them) the activated gates and
// tanh(c) are not written back, which saves most of the step's memory traffic.
template <bool has_c_prev, bool keep>
void forward_row(int64_t start, int64_t stop, float* gi, float* gf, float* go, float* gg, const float* cp, float* cr,
                 float* hr, float* tr) {
  for_vectors(start, stop, [&](int64_t j, int64_t count) C10_ALWAYS_INLINE_ATTRIBUTE {
    const Vec i = sigmoid(Vec::loadu(gi + j, count)), f = sigmoid(Vec::loadu(gf + j, count));
    const Vec o = sigmoid(Vec::loadu(go + j, count)), g = tanh_poly(Vec::loadu(gg + j, count));
    Vec c = i * g;
    if constexpr (has_c_prev) c = at::vec::fmadd(f, Vec::loadu(cp + j, count), c);
    const Vec t = tanh_poly(c);
    if constexpr (keep) {
      i.store(gi + j, count), f.store(gf + j, count), o.store(go + j, count), g.store(gg + j, count);
      t.store(tr + j, count);
    }
    c.store(cr + j, count);
    (o * t).store(hr + j, count);
  });
}

// gates: pre-activations [4H, m] (rows i, f, o, g); c_prev [H, m] or None (zeros). Writes
// c = f * c_prev + i * g and h = o * tanh(c); with tanh_c also the gates activated in place and
// tanh_c = tanh(c) (what the backward needs).
void lstm_gates_forward(const Tensor& gates, const std::optional<Tensor>& c_prev, const Tensor& c, const Tensor& h,
                        const std::optional<Tensor>& tanh_c) {
  TORCH_CHECK(c.dim() == 2, "c must be [H, m], got ", c.sizes());
  const int64_t hidden = c.size(0), m = c.size(1);
  check_matrix(gates, "gates", 4 * hidden, m);
  check_matrix(c, "c", hidden, m);
  check_matrix(h, "h", hidden, m);
  if (c_prev.has_value()) check_matrix(*c_prev, "c_prev", hidden, m);
  if (tanh_c.has_value()) check_matrix(*tanh_c, "tanh_c", hidden, m);
  const int64_t ld = gates.stride(0);
  float* base = gates.mutable_data_ptr<float>();
  for_tasks(hidden, m, [&](int64_t row, int64_t start, int64_t stop) {
    float *gi = base + row * ld, *gf = base + (hidden + row) * ld;
    float *go = base + (2 * hidden + row) * ld, *gg = base + (3 * hidden + row) * ld;
    float* cr = c.mutable_data_ptr<float>() + row * c.stride(0);
    float* hr = h.mutable_data_ptr<float>() + row * h.stride(0);
    const float* cp = row_or_null(c_prev, row);
    float* tr = mutable_row_or_null(tanh_c, row);
    if (cp && tr) forward_row<true, true>(start, stop, gi, gf, go, gg, cp, cr, hr, tr);
    else if (cp) forward_row<true, false>(start, stop, gi, gf, go, gg, cp, cr, hr, tr);
    else if (tr) forward_row<false, true>(start, stop, gi, gf, go, gg, cp, cr, hr, tr);
    else forward_row<false, false>(start, stop, gi, gf, go, gg, cp, cr, hr, tr);
  });
}

template <bool has_c_prev, bool has_dc_next, bool has_dc_prev>
void backward_row(int64_t start, int64_t stop, const float* gi, const float* gf, const float* go, const float* gg,
                  const float* tr, const float* cp, const float* dhr, const float* dnr, float* di, float* df,
                  float* dout, float* dg, float* dcp) {
  const Vec one(1.0f);
  for_vectors(start, stop, [&](int64_t j, int64_t count) C10_ALWAYS_INLINE_ATTRIBUTE {
    const Vec i = Vec::loadu(gi + j, count), f = Vec::loadu(gf + j, count), o = Vec::loadu(go + j, count);
    const Vec g = Vec::loadu(gg + j, count), t = Vec::loadu(tr + j, count), dh = Vec::loadu(dhr + j, count);
    Vec dc = dh * o * (one - t * t);
    if constexpr (has_dc_next) dc = dc + Vec::loadu(dnr + j, count);
    (dc * g * i * (one - i)).store(di + j, count);
    if constexpr (has_c_prev) (dc * Vec::loadu(cp + j, count) * f * (one - f)).store(df + j, count);
    else Vec(0.0f).store(df + j, count);
    (dh * t * o * (one - o)).store(dout + j, count);
    (dc * i * (one - g * g)).store(dg + j, count);
    if constexpr (has_dc_prev) (dc * f).store(dcp + j, count);
  });
}

// From the activated gates [4H, m] and tanh_c [H, m]: d_pre [4H, m] (gradient of the
// pre-activations) and, unless None, dc_prev = dc * f. c_prev and dc_next: None means zeros.
void lstm_gates_backward(const Tensor& gates, const Tensor& tanh_c, const std::optional<Tensor>& c_prev,
                         const Tensor& dh, const std::optional<Tensor>& dc_next, const Tensor& d_pre,
                         const std::optional<Tensor>& dc_prev) {
  TORCH_CHECK(tanh_c.dim() == 2, "tanh_c must be [H, m], got ", tanh_c.sizes());
  const int64_t hidden = tanh_c.size(0), m = tanh_c.size(1);
  check_matrix(gates, "gates", 4 * hidden, m);
  check_matrix(tanh_c, "tanh_c", hidden, m);
  check_matrix(dh, "dh", hidden, m);
  check_matrix(d_pre, "d_pre", 4 * hidden, m);
  if (c_prev.has_value()) check_matrix(*c_prev, "c_prev", hidden, m);
  if (dc_next.has_value()) check_matrix(*dc_next, "dc_next", hidden, m);
  if (dc_prev.has_value()) check_matrix(*dc_prev, "dc_prev", hidden, m);
  const int variant = c_prev.has_value() * 4 + dc_next.has_value() * 2 + dc_prev.has_value();
  const int64_t ld = gates.stride(0), ld_d = d_pre.stride(0);
  const float* g0 = gates.const_data_ptr<float>();
  float* d0 = d_pre.mutable_data_ptr<float>();
  for_tasks(hidden, m, [&](int64_t row, int64_t start, int64_t stop) {
    const float *gi = g0 + row * ld, *gf = g0 + (hidden + row) * ld;
    const float *go = g0 + (2 * hidden + row) * ld, *gg = g0 + (3 * hidden + row) * ld;
    const float* tr = tanh_c.const_data_ptr<float>() + row * tanh_c.stride(0);
    const float* dhr = dh.const_data_ptr<float>() + row * dh.stride(0);
    const float *cp = row_or_null(c_prev, row), *dnr = row_or_null(dc_next, row);
    float *di = d0 + row * ld_d, *df = d0 + (hidden + row) * ld_d;
    float *dout = d0 + (2 * hidden + row) * ld_d, *dg = d0 + (3 * hidden + row) * ld_d;
    float* dcp = mutable_row_or_null(dc_prev, row);
#define FEWSHOT_ROW(a, b, c) backward_row<a, b, c>(start, stop, gi, gf, go, gg, tr, cp, dhr, dnr, di, df, dout, dg, dcp)
    switch (variant) {
      case 0: FEWSHOT_ROW(false, false, false); break;
      case 1: FEWSHOT_ROW(false, false, true); break;
      case 2: FEWSHOT_ROW(false, true, false); break;
      case 3: FEWSHOT_ROW(false, true, true); break;
      case 4: FEWSHOT_ROW(true, false, false); break;
      case 5: FEWSHOT_ROW(true, false, true); break;
      case 6: FEWSHOT_ROW(true, true, false); break;
      default: FEWSHOT_ROW(true, true, true); break;
    }
#undef FEWSHOT_ROW
  });
}

// ---- The whole step, walked in blocks of columns (one task each, on torch's threads), so that a
// block's gates stay in cache between the product that makes them and the maths that reads them.
// Per block: [x; h; 1] is gathered into a small buffer, gates = [W_x, W_h, b] [x; h; 1] (one
// product), then the pointwise maths above; the backward's products (dh_prev = W_h^T d_pre,
// dx = W_x^T d_pre, dW = d_pre [x; h; 1]^T) run on the block's d_pre while it is in cache. What the
// backward needs is kept per block, [5H, m] (the activated gates i, f, o, g, then tanh(c)): blocks
// stay below glibc's 32 MB mmap threshold, so their memory is reused rather than faulted in anew.
// Each block writes its weight gradient to its own slice of a partials tensor, added up in block
// order: the result depends on the block size, never on the number of threads.

Tensor opt_narrow(const std::optional<Tensor>& t, int64_t start, int64_t m) {
  return t.has_value() ? t->narrow(1, start, m) : Tensor();
}

std::optional<Tensor> maybe(const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; }

// [W_x, W_h, b] ([4H, F_x + H + 1]); without h (the first step, h = 0) [W_x, b].
Tensor augmented_weight(const Tensor& x, const std::optional<Tensor>& h, const std::optional<Tensor>& c,
                        const Tensor& w_x, const Tensor& w_h, const Tensor& bias, int64_t block) {
  TORCH_CHECK(x.dim() == 2, "x must be [F_x, n], got ", x.sizes());
  TORCH_CHECK(w_h.dim() == 2 && w_h.size(0) == 4 * w_h.size(1), "w_h must be [4H, H], got ", w_h.sizes());
  TORCH_CHECK(block >= 1, "block_size must be at least 1, got ", block);
  const int64_t hidden = w_h.size(1), n = x.size(1);
  check_matrix(x, "x", x.size(0), n);
  check_matrix(w_x, "w_x", 4 * hidden, x.size(0));
  check_matrix(w_h, "w_h", 4 * hidden, hidden);
  check_vector(bias, "bias", 4 * hidden);
  if (h.has_value()) check_matrix(*h, "h", hidden, n);
  if (c.has_value()) check_matrix(*c, "c", hidden, n);
  return h.has_value() ? at::cat({w_x, w_h, bias.unsqueeze(1)}, 1) : at::cat({w_x, bias.unsqueeze(1)}, 1);
}

// Write [x; h; 1] into the first rows of `inputs` (rows contiguous); returns that [F_x (+ H) + 1, m] view.
Tensor gather_inputs(const Tensor& inputs, const Tensor& x, const Tensor& h) {
  const int64_t n_x = x.size(0), m = x.size(1), rows = n_x + (h.defined() ? h.size(0) : 0) + 1;
  Tensor view = inputs.narrow(0, 0, rows).narrow(1, 0, m);
  view.narrow(0, 0, n_x).copy_(x);
  if (h.defined()) view.narrow(0, n_x, h.size(0)).copy_(h);
  view.select(0, rows - 1).fill_(1.0f);
  return view;
}

// One block's forward: the pre-activations into gates ([4H, m]), then the pointwise maths writes c
// and h (and activates the gates in place, and writes tanh_c, when tanh_c is defined).
void forward_block(const Tensor& x, const Tensor& h, const Tensor& c_prev, const Tensor& weight,
                   const Tensor& inputs_buffer, const Tensor& gates, const Tensor& c, const Tensor& h_out,
                   const Tensor& tanh_c) {
  Tensor out = gates;  // a handle on the same memory
  at::mm_out(out, weight, gather_inputs(inputs_buffer, x, h));
  lstm_gates_forward(gates, maybe(c_prev), c, h_out, maybe(tanh_c));
}

// h, c: None means zeros (the first step). Returns (h_new, c_new, kept): with keep, one [5H, m]
// tensor per block (see above); without it none (inference, or the backward recomputes them).
std::tuple<Tensor, Tensor, std::vector<Tensor>> lstm_step_forward(const Tensor& x, const std::optional<Tensor>& h,
                                                                  const std::optional<Tensor>& c, const Tensor& w_x,
                                                                  const Tensor& w_h, const Tensor& bias,
                                                                  int64_t block, bool keep) {
  const Tensor weight = augmented_weight(x, h, c, w_x, w_h, bias, block);
  const int64_t hidden = w_h.size(1), n = x.size(1), n_blocks = (n + block - 1) / block;
  Tensor h_new = at::empty({hidden, n}, x.options()), c_new = at::empty({hidden, n}, x.options());
  std::vector<Tensor> kept(keep ? n_blocks : 0);
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t cols = std::min(block, n);
    Tensor inputs = at::empty({weight.size(1), cols}, x.options());
    Tensor scratch = keep ? Tensor() : at::empty({4 * hidden, cols}, x.options());
    for (int64_t k = begin; k < end; ++k) {
      const int64_t start = k * block, m = std::min(block, n - start);
      Tensor gates, tanh_c;
      if (keep) {
        kept[k] = at::empty({5 * hidden, m}, x.options());
        gates = kept[k].narrow(0, 0, 4 * hidden), tanh_c = kept[k].narrow(0, 4 * hidden, hidden);
      } else {
        gates = scratch.narrow(1, 0, m);
      }
      forward_block(x.narrow(1, start, m), opt_narrow(h, start, m), opt_narrow(c, start, m), weight, inputs, gates,
                    c_new.narrow(1, start, m), h_new.narrow(1, start, m), tanh_c);
    }
  });
  return {h_new, c_new, kept};
}

// Gradients of lstm_step_forward: (dx, dh_prev, dc_prev, dweight = [dW_x, dW_h, db] [4H, F_x (+ H)
// + 1]); one not asked for (need_*) is empty. kept: what the forward kept, or empty (then the gates
// are recomputed block by block). dc_next: None means zeros.
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_step_backward(
    const Tensor& x, const std::optional<Tensor>& h, const std::optional<Tensor>& c, const Tensor& w_x,
    const Tensor& w_h, const Tensor& bias, const std::vector<Tensor>& kept, const Tensor& dh,
    const std::optional<Tensor>& dc_next, int64_t block, bool need_x, bool need_h, bool need_c) {
  const Tensor weight = augmented_weight(x, h, c, w_x, w_h, bias, block);
  const int64_t hidden = w_h.size(1), n = x.size(1), n_x = x.size(0), width = weight.size(1);
  const int64_t n_blocks = (n + block - 1) / block;
  TORCH_CHECK(kept.empty() || static_cast<int64_t>(kept.size()) == n_blocks, "kept must hold ", n_blocks,
              " blocks (one per block of ", block, " coordinates), got ", kept.size());
  for (size_t k = 0; k < kept.size(); ++k)
    check_matrix(kept[k], "a kept block", 5 * hidden, std::min(block, n - static_cast<int64_t>(k) * block));
  check_matrix(dh, "dh", hidden, n);
  if (dc_next.has_value()) check_matrix(*dc_next, "dc_next", hidden, n);
  need_h = need_h && h.has_value();
  need_c = need_c && c.has_value();
  Tensor dx = need_x ? at::empty({n_x, n}, x.options()) : at::empty({0}, x.options());
  Tensor dh_prev = need_h ? at::empty({hidden, n}, x.options()) : at::empty({0}, x.options());
  Tensor dc_prev = need_c ? at::empty({hidden, n}, x.options()) : at::empty({0}, x.options());
  Tensor partials = at::empty({n_blocks, width, 4 * hidden}, x.options());  // [x; h; 1] d_pre^T: the fast product
  const Tensor w_x_t = w_x.t(), w_h_t = w_h.t();
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t cols = std::min(block, n);
    Tensor inputs = at::empty({width, cols}, x.options()), d_pre_buffer = at::empty({4 * hidden, cols}, x.options());
    Tensor recomputed = kept.empty() ? at::empty({7 * hidden, cols}, x.options()) : Tensor();
    for (int64_t k = begin; k < end; ++k) {
      const int64_t start = k * block, m = std::min(block, n - start);
      const Tensor x_k = x.narrow(1, start, m), h_k = opt_narrow(h, start, m), c_k = opt_narrow(c, start, m);
      Tensor gates, tanh_c, in;
      if (!kept.empty()) {
        gates = kept[k].narrow(0, 0, 4 * hidden), tanh_c = kept[k].narrow(0, 4 * hidden, hidden);
        in = gather_inputs(inputs, x_k, h_k);
      } else {  // rows: gates 4H, tanh_c H, then scratch for c and h (not needed again) 2H
        const Tensor r = recomputed.narrow(1, 0, m);
        gates = r.narrow(0, 0, 4 * hidden), tanh_c = r.narrow(0, 4 * hidden, hidden);
        forward_block(x_k, h_k, c_k, weight, inputs, gates, r.narrow(0, 5 * hidden, hidden),
                      r.narrow(0, 6 * hidden, hidden), tanh_c);
        in = inputs.narrow(0, 0, width).narrow(1, 0, m);  // forward_block gathered them
      }
      Tensor d_pre = d_pre_buffer.narrow(1, 0, m);
      lstm_gates_backward(gates, tanh_c, maybe(c_k), dh.narrow(1, start, m), maybe(opt_narrow(dc_next, start, m)), d_pre,
                          need_c ? std::optional<Tensor>(dc_prev.narrow(1, start, m)) : std::nullopt);
      if (need_h) {
        Tensor out = dh_prev.narrow(1, start, m);
        at::mm_out(out, w_h_t, d_pre);
      }
      if (need_x) {
        Tensor out = dx.narrow(1, start, m);
        at::mm_out(out, w_x_t, d_pre);
      }
      Tensor partial = partials.select(0, k);
      at::mm_out(partial, in, d_pre.t());
    }
  });
  return {dx, dh_prev, dc_prev, partials.sum(0).t().contiguous()};
}

// ---- The Meta-Learner cell (fewshot/methods/meta_lstm/cell.py), per coordinate j:
//   pre_k = b_k + sum_r W[k, r] h[r, j] + W[k, H] theta[j] + W[k, H + 1] prev_k[j]  (k = i, f)
//   i, f = sigmoid(pre);  theta_new = f * theta - i * grad;  state_k = pre_k or gate_k
// W is [2, H + 2], h is [H, n]. Work is split into chunks of kCellChunk coordinates.

void check_cell_inputs(const Tensor& h, const Tensor& theta, const Tensor& grad, const Tensor& i_prev,
                       const Tensor& f_prev, const Tensor& weight) {
  TORCH_CHECK(h.dim() == 2, "h must be [H, n], got ", h.sizes());
  const int64_t hidden = h.size(0), n = h.size(1);
  check_matrix(h, "h", hidden, n);
  check_vector(theta, "theta", n);
  check_vector(grad, "grad", n);
  check_vector(i_prev, "i_prev", n);
  check_vector(f_prev, "f_prev", n);
  check_matrix(weight, "weight", 2, hidden + 2);
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> meta_cell_forward(const Tensor& h, const Tensor& theta,
                                                                      const Tensor& grad, const Tensor& i_prev,
                                                                      const Tensor& f_prev, const Tensor& weight,
                                                                      const Tensor& bias, bool feed_preactivation) {
  check_cell_inputs(h, theta, grad, i_prev, f_prev, weight);
  check_vector(bias, "bias", 2);
  const int64_t hidden = h.size(0), n = h.size(1), width = hidden + 2, ld_h = h.stride(0);
  Tensor theta_out = at::empty({n}, theta.options()), i_out = at::empty_like(theta_out);
  Tensor f_out = at::empty_like(theta_out), state_i = at::empty_like(theta_out), state_f = at::empty_like(theta_out);
  const float *hp = h.const_data_ptr<float>(), *w = weight.const_data_ptr<float>(), *b = bias.const_data_ptr<float>();
  const float *th = theta.const_data_ptr<float>(), *gr = grad.const_data_ptr<float>();
  const float *ip = i_prev.const_data_ptr<float>(), *fp = f_prev.const_data_ptr<float>();
  float *to = theta_out.mutable_data_ptr<float>(), *io = i_out.mutable_data_ptr<float>();
  float *fo = f_out.mutable_data_ptr<float>(), *si = state_i.mutable_data_ptr<float>();
  float* sf = state_f.mutable_data_ptr<float>();
  const int64_t n_chunks = (n + kCellChunk - 1) / kCellChunk;
  at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
    float pre_i[kCellChunk], pre_f[kCellChunk];
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t start = chunk * kCellChunk, len = std::min(kCellChunk, n - start);
      std::fill(pre_i, pre_i + len, b[0]);
      std::fill(pre_f, pre_f + len, b[1]);
      for (int64_t r = 0; r < hidden; ++r) {
        const float* hr = hp + r * ld_h + start;
        const Vec wi(w[r]), wf(w[width + r]);
        for (int64_t j = 0; j < len; j += Vec::size()) {
          const int64_t count = std::min<int64_t>(Vec::size(), len - j);
          const Vec x = Vec::loadu(hr + j, count);
          at::vec::fmadd(wi, x, Vec::loadu(pre_i + j, count)).store(pre_i + j, count);
          at::vec::fmadd(wf, x, Vec::loadu(pre_f + j, count)).store(pre_f + j, count);
        }
      }
      const Vec wi_t(w[hidden]), wi_p(w[hidden + 1]), wf_t(w[width + hidden]), wf_p(w[width + hidden + 1]);
      for (int64_t j = 0; j < len; j += Vec::size()) {
        const int64_t count = std::min<int64_t>(Vec::size(), len - j), q = start + j;
        const Vec t = Vec::loadu(th + q, count);
        const Vec pi = Vec::loadu(pre_i + j, count) + wi_t * t + wi_p * Vec::loadu(ip + q, count);
        const Vec pf = Vec::loadu(pre_f + j, count) + wf_t * t + wf_p * Vec::loadu(fp + q, count);
        const Vec i = sigmoid(pi), f = sigmoid(pf);
        (f * t - i * Vec::loadu(gr + q, count)).store(to + q, count);
        i.store(io + q, count), f.store(fo + q, count);
        (feed_preactivation ? pi : i).store(si + q, count);
        (feed_preactivation ? pf : f).store(sf + q, count);
      }
    }
  });
  return {theta_out, i_out, f_out, state_i, state_f};
}

// Horizontal sum of a vector, lane by lane in a fixed order (the same result on every run).
inline float lane_sum(const Vec& v) {
  float lanes[Vec::size()];
  v.store(lanes);
  float s = 0.0f;
  for (int64_t k = 0; k < Vec::size(); ++k) s += lanes[k];
  return s;
}

// Gradients of meta_cell_forward: (d_h, d_theta_prev, d_i_prev, d_f_prev, d_weight, d_bias) from
// the gradients of its five outputs. Each chunk writes its weight-gradient sums to its own row of
// a partials tensor, added up in chunk order (deterministic for any number of threads).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> meta_cell_backward(
    const Tensor& h, const Tensor& theta, const Tensor& grad, const Tensor& i_prev, const Tensor& f_prev,
    const Tensor& i_gate, const Tensor& f_gate, const Tensor& weight, bool feed_preactivation, const Tensor& d_theta,
    const Tensor& d_i, const Tensor& d_f, const Tensor& d_state_i, const Tensor& d_state_f) {
  check_cell_inputs(h, theta, grad, i_prev, f_prev, weight);
  const int64_t hidden = h.size(0), n = h.size(1), width = hidden + 2, ld_h = h.stride(0);
  const Tensor* vectors[] = {&i_gate, &f_gate, &d_theta, &d_i, &d_f, &d_state_i, &d_state_f};
  const char* names[] = {"i_gate", "f_gate", "d_theta", "d_i", "d_f", "d_state_i", "d_state_f"};
  for (int k = 0; k < 7; ++k) check_vector(*vectors[k], names[k], n);
  Tensor d_h = at::empty({hidden, n}, h.options());
  Tensor d_theta_prev = at::empty({n}, theta.options()), d_i_prev = at::empty_like(d_theta_prev);
  Tensor d_f_prev = at::empty_like(d_theta_prev);
  const int64_t n_chunks = (n + kCellChunk - 1) / kCellChunk, n_sums = hidden + 3;
  Tensor partials = at::empty({n_chunks, 2, n_sums}, theta.options());
  const float *hp = h.const_data_ptr<float>(), *w = weight.const_data_ptr<float>();
  const float *th = theta.const_data_ptr<float>(), *gr = grad.const_data_ptr<float>();
  const float *ip = i_prev.const_data_ptr<float>(), *fp = f_prev.const_data_ptr<float>();
  const float *ig = i_gate.const_data_ptr<float>(), *fg = f_gate.const_data_ptr<float>();
  const float *dt = d_theta.const_data_ptr<float>(), *dip = d_i.const_data_ptr<float>();
  const float *dfp = d_f.const_data_ptr<float>(), *dsi = d_state_i.const_data_ptr<float>();
  const float* dsf = d_state_f.const_data_ptr<float>();
  float *dh = d_h.mutable_data_ptr<float>(), *dtp = d_theta_prev.mutable_data_ptr<float>();
  float *dipo = d_i_prev.mutable_data_ptr<float>(), *dfpo = d_f_prev.mutable_data_ptr<float>();
  float* sums_all = partials.mutable_data_ptr<float>();
  at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
    float dp_i[kCellChunk], dp_f[kCellChunk];
    const Vec one(1.0f), wi_t(w[hidden]), wi_p(w[hidden + 1]), wf_t(w[width + hidden]), wf_p(w[width + hidden + 1]);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t start = chunk * kCellChunk, len = std::min(kCellChunk, n - start);
      float* sums = sums_all + chunk * 2 * n_sums;
      Vec s_ti(0.0f), s_tf(0.0f), s_pi(0.0f), s_pf(0.0f), s_bi(0.0f), s_bf(0.0f);
      for (int64_t j = 0; j < len; j += Vec::size()) {
        const int64_t count = std::min<int64_t>(Vec::size(), len - j), q = start + j;
        const Vec i = Vec::loadu(ig + q, count), f = Vec::loadu(fg + q, count);
        const Vec dth = Vec::loadu(dt + q, count), t = Vec::loadu(th + q, count);
        Vec gi = Vec::loadu(dip + q, count) - dth * Vec::loadu(gr + q, count);
        Vec gf = Vec::loadu(dfp + q, count) + dth * t;
        const Vec dsi_v = Vec::loadu(dsi + q, count), dsf_v = Vec::loadu(dsf + q, count);
        if (!feed_preactivation) gi = gi + dsi_v, gf = gf + dsf_v;
        Vec pi = gi * i * (one - i), pf = gf * f * (one - f);
        if (feed_preactivation) pi = pi + dsi_v, pf = pf + dsf_v;
        pi.store(dp_i + j, count), pf.store(dp_f + j, count);
        (dth * f + wi_t * pi + wf_t * pf).store(dtp + q, count);
        (wi_p * pi).store(dipo + q, count);
        (wf_p * pf).store(dfpo + q, count);
        // loadu(.., count) zero-fills the lanes past the end, so the sums below stay exact
        s_ti = at::vec::fmadd(pi, t, s_ti), s_tf = at::vec::fmadd(pf, t, s_tf);
        s_pi = at::vec::fmadd(pi, Vec::loadu(ip + q, count), s_pi);
        s_pf = at::vec::fmadd(pf, Vec::loadu(fp + q, count), s_pf);
        s_bi = s_bi + pi, s_bf = s_bf + pf;
      }
      for (int64_t r = 0; r < hidden; ++r) {
        const float* hr = hp + r * ld_h + start;
        float* dhr = dh + r * n + start;
        const Vec wi(w[r]), wf(w[width + r]);
        Vec s_i(0.0f), s_f(0.0f);
        for (int64_t j = 0; j < len; j += Vec::size()) {
          const int64_t count = std::min<int64_t>(Vec::size(), len - j);
          const Vec a = Vec::loadu(dp_i + j, count), b = Vec::loadu(dp_f + j, count), x = Vec::loadu(hr + j, count);
          at::vec::fmadd(wi, a, wf * b).store(dhr + j, count);
          s_i = at::vec::fmadd(a, x, s_i), s_f = at::vec::fmadd(b, x, s_f);
        }
        sums[r] = lane_sum(s_i), sums[n_sums + r] = lane_sum(s_f);
      }
      sums[hidden] = lane_sum(s_ti), sums[hidden + 1] = lane_sum(s_pi), sums[hidden + 2] = lane_sum(s_bi);
      sums[n_sums + hidden] = lane_sum(s_tf), sums[n_sums + hidden + 1] = lane_sum(s_pf);
      sums[n_sums + hidden + 2] = lane_sum(s_bf);
    }
  });
  Tensor totals = partials.sum(0);  // [2, H + 3]: the weight's H + 2 columns, then the bias
  return {d_h, d_theta_prev, d_i_prev, d_f_prev, totals.narrow(1, 0, width).contiguous(), totals.select(1, width).contiguous()};
}

// The instruction set at::vec was built for here (for the tests and the bench).
std::string vector_isa() {
#if defined(CPU_CAPABILITY_AVX512)
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using pybind11::arg;
  m.def("lstm_gates_forward", &lstm_gates_forward, "activate the gates in place; write c, h and tanh(c)",
        arg("gates"), arg("c_prev"), arg("c"), arg("h"), arg("tanh_c"));
  m.def("lstm_gates_backward", &lstm_gates_backward, "pre-activation gradient and dc_prev", arg("gates"),
        arg("tanh_c"), arg("c_prev"), arg("dh"), arg("dc_next"), arg("d_pre"), arg("dc_prev"));
  m.def("lstm_step_forward", &lstm_step_forward, "the coordinate-wise LSTM step, block by block", arg("x"), arg("h"),
        arg("c"), arg("w_x"), arg("w_h"), arg("bias"), arg("block_size"), arg("keep"));
  m.def("lstm_step_backward", &lstm_step_backward, "gradients of lstm_step_forward", arg("x"), arg("h"), arg("c"),
        arg("w_x"), arg("w_h"), arg("bias"), arg("kept"), arg("dh"), arg("dc_next"),
        arg("block_size"), arg("need_x"), arg("need_h"), arg("need_c"));
  m.def("meta_cell_forward", &meta_cell_forward, "the meta-learner cell's step");
  m.def("meta_cell_backward", &meta_cell_backward, "gradients of meta_cell_forward");
  m.def("vector_isa", &vector_isa, "the at::vec instruction set of this build");
}
