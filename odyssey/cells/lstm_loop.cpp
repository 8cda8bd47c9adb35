// The LSTM time loop of odyssey.cells.fused.FusedRecurrence, compiled: the whole forward pass and
// the whole backward pass (BPTT) over T steps of M members in one call each, on the CPU.
//
// The Python loop issues ~40 small ATen ops per step; at batch 1 (the paper's online SGD) each
// moves a few hundred numbers, so the dispatch, not the arithmetic, is the cost. Here a step is
// a few loops per member: the recurrent product, then vectorized passes over its units. Batch 1
// only (dims' B is 1; native.py sends larger batches to the Python loop, where BLAS and the batch
// amortize the per-step cost).
// The buffers, their layouts and the equations are those of odyssey/cells/fused.py (read its
// docstring first); this file only fills the same buffers:
//
//   PRE (T, M, G*H, B)  in: W x_t + b        (forward; the peephole terms are not written back;
//                       any strides of its T and M axes, e.g. member-major from one batched GEMM)
//   S   (T+1, M, H + K*H, B)  out: S[t+1] = [y_t; own gate activations i, f, o]; S[0] = 0
//   ZC  (T+1, M, 2, H, B)     out: ZC[t] = [z_t; c_{t-1}]
//   HC  (T, M, H, B)          out: h(c_t) (with an output gate; else y is h(c) itself)
//   Wh  (M, G*H, H)   R, the recurrent weights (weight_hh); Wg (M, K*H, K*H) Rg (FGR, else null)
//   DS  (T, M, R, B)  in/out: the gradient reaching S[t+1]'s first R rows (dY's share in, R^T dpre added)
//   dPRE (T, M, G*H, B) out; dC (T, M, H, B) optional in; P (M, K, H) peepholes (i, f, o order)
//
// Member m computes only its own units u < hidden[m] (a pack pads hidden sizes to H; the padded
// units' weights are zero, so their values are exactly zero on the Python path too, except FGR's
// padded gate activations, which feed only zero weights). Every buffer is zero-initialised by the
// caller, so what is not written stays zero. Member m runs the steps t < steps[m] only (its own
// sequence length, in any member order; null: every member runs all T steps).
//
// Summation order: every sum depends only on the member's own hidden size (dot products in a
// fixed lane order, backward accumulations in ascending row order), not on M or alignment, so a
// member's numbers do not depend on the rest of the pack. No -ffast-math: NaN and inf propagate as in
// ATen, and a diverged member is found by the trainer's per-epoch check.

#include <cmath>
#include <cstdint>

namespace {

enum Act : int64_t { TANH = 0, SIGMOID = 1, IDENTITY = 2, RELU = 3, SIGMOID4 = 4, SIGMOID2 = 5 };

// exp, sigmoid and tanh as branch-free inline code (Cephes' range reduction and polynomials),
// so that the compiler vectorizes the loops over units; glibc's scalar tanhf alone cost more
// than the rest of a step. Measured against ATen on [-120, 120]: tanh within 1 ulp, sigmoid
// within 2.2 ulp (float and double). NaN passes through every one (no comparison turns it
// into a number).
inline float exp_(float x) {
  x = x > 88.3762626647949f ? 88.3762626647949f : x;
  x = x < -87.3365447504f ? -87.3365447504f : x;
  float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  n = n == n ? n : 0.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline double exp_(double x) {
  x = x > 709.0 ? 709.0 : x;
  x = x < -708.0 ? -708.0 : x;
  double n = __builtin_floor(x * 1.4426950408889634073599 + 0.5);
  n = n == n ? n : 0.0;
  double r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  const double rr = r * r;
  double px = ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1) * r;
  double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr +
              2.00000000000000000009e0;
  double y = 1.0 + 2.0 * (px / (qx - px));
  int64_t bits = (static_cast<int64_t>(n) + 1023) << 52;
  double scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

template <typename F>
inline F sigmoid(F x) { return F(1) / (F(1) + exp_(-x)); }

// tanh: an odd polynomial (float) or rational function (double) for |x| < 0.625, else
// sign(x) (1 - 2 / (e^{2|x|} + 1)).
inline float tanh_small(float x) {
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  return p * z * x + x;
}

inline double tanh_small(double x) {
  const double z = x * x;
  const double p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3;
  const double q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3;
  return x + x * (z * p / q);
}

template <typename F>
inline F tanh_(F x) {
  const F a = x < F(0) ? -x : x;
  const F big = F(1) - F(2) / (exp_(a + a) + F(1));
  const F signed_big = x < F(0) ? -big : big;
  return a < F(0.625) ? tanh_small(x) : signed_big;
}

template <typename F>
void act(int64_t kind, int64_t n, const F* __restrict__ x, F* __restrict__ y) {
  switch (kind) {
    case TANH: for (int64_t e = 0; e < n; ++e) y[e] = tanh_(x[e]); break;
    case SIGMOID: for (int64_t e = 0; e < n; ++e) y[e] = sigmoid(x[e]); break;
    case IDENTITY: for (int64_t e = 0; e < n; ++e) y[e] = x[e]; break;
    case RELU: for (int64_t e = 0; e < n; ++e) y[e] = x[e] < F(0) ? F(0) : x[e]; break;  // NaN stays NaN
    case SIGMOID4: for (int64_t e = 0; e < n; ++e) y[e] = sigmoid(x[e]) * F(4) - F(2); break;
    default: for (int64_t e = 0; e < n; ++e) y[e] = sigmoid(x[e]) * F(2) - F(1); break;
  }
}

// dx = dL/dx given g = dL/dy and the output y = act(x) (odyssey/cells/activations.py's table).
template <typename F>
void act_backward(int64_t kind, int64_t n, const F* __restrict__ g, const F* __restrict__ y, F* __restrict__ dx) {
  switch (kind) {
    case TANH: for (int64_t e = 0; e < n; ++e) dx[e] = g[e] * (F(1) - y[e] * y[e]); break;
    case SIGMOID: for (int64_t e = 0; e < n; ++e) dx[e] = g[e] * (F(1) - y[e]) * y[e]; break;
    case IDENTITY: for (int64_t e = 0; e < n; ++e) dx[e] = g[e]; break;
    case RELU: for (int64_t e = 0; e < n; ++e) dx[e] = y[e] <= F(0) ? F(0) : g[e]; break;  // as ATen's threshold_backward
    case SIGMOID4:
      for (int64_t e = 0; e < n; ++e) { const F s = (y[e] + F(2)) / F(4); dx[e] = g[e] * F(4) * (F(1) - s) * s; }
      break;
    default:
      for (int64_t e = 0; e < n; ++e) { const F s = (y[e] + F(1)) / F(2); dx[e] = g[e] * F(2) * (F(1) - s) * s; }
      break;
  }
}

// y = sigmoid(x + p * c) (p null: sigmoid(x))
template <typename F>
void gate(int64_t n, const F* __restrict__ x, const F* __restrict__ p, const F* __restrict__ c, F* __restrict__ y) {
  if (p) for (int64_t e = 0; e < n; ++e) y[e] = sigmoid(x[e] + p[e] * c[e]);
  else for (int64_t e = 0; e < n; ++e) y[e] = sigmoid(x[e]);
}

// out[0:n] += s0 a0 + s1 a1 + ... (row by row, in this order: four axpys fused into one pass).
template <typename F>
inline void axpy4(int64_t n, const F* s, const F* const* a, F* __restrict__ out) {
  const F s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  const F* __restrict__ a0 = a[0];
  const F* __restrict__ a1 = a[1];
  const F* __restrict__ a2 = a[2];
  const F* __restrict__ a3 = a[3];
  for (int64_t u = 0; u < n; ++u) out[u] = (((out[u] + s0 * a0[u]) + s1 * a1[u]) + s2 * a2[u]) + s3 * a3[u];
}

template <typename F>
inline void axpy(int64_t n, F s, const F* __restrict__ a, F* __restrict__ out) {
  for (int64_t u = 0; u < n; ++u) out[u] += s * a[u];
}

struct Dims {
  int64_t M, T, B, H, n_if, has_i, has_f, has_o, coupled, peep, fgr, g_act, h_act;
  int64_t pre_t, pre_m;  // PRE's step and member strides (elements): any order of the two axes
  int64_t G() const { return n_if + 1 + has_o; }  // blocks: [i, f | g | o]
  int64_t K() const { return n_if + has_o; }
  int64_t SR() const { return H + K() * H; }    // rows of S
  int64_t R() const { return fgr ? SR() : H; }  // rows of the recurrent state
};

// The recurrent products of one member at batch 1, over its real units u < hm only, reading the
// weights as stored (no transposed or concatenated copy). Pre-activation block g (i, f | z | o)
// has gate q = gate_of(g) in Rg's row blocks (FGR), or -1 for the z block (no gate weights).
inline int64_t gate_of(const Dims& d, int64_t g) { return g < d.n_if ? g : (g == d.n_if ? -1 : d.n_if); }

// a[0:n] . b[0:n], in a fixed order that depends on n only (V lanes, a fixed tree, then the tail).
template <typename F>
inline F dot(const F* __restrict__ a, const F* __restrict__ b, int64_t n) {
  constexpr int64_t V = 64 / sizeof(F);
  F acc[V] = {};
  int64_t i = 0;
  for (; i + V <= n; i += V)
    for (int64_t j = 0; j < V; ++j) acc[j] += a[i + j] * b[i + j];
  for (int64_t w = V / 2; w > 0; w /= 2)
    for (int64_t j = 0; j < w; ++j) acc[j] += acc[j + w];
  F sum = acc[0];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Four dot products at once: add(a, b, n) accumulates a_k[0:n] . b[0:n] for four rows a_k that
// share b, over any number of segments (FGR: y' and each gate's activations), into V-lane
// accumulators and a scalar tail; finish() reduces each row once, in a fixed lane order, and
// adds it to out[k]. A row's sum depends only on the segments' lengths. (A transposed copy of
// the weights for axpy-form products measured slower: the copy per call cost more than these
// reductions.)
template <typename F>
struct Dot4 {
  static constexpr int64_t V = 64 / sizeof(F);
  F c[4][V] = {};
  F tail[4] = {};

  inline void add(const F* const* a, const F* __restrict__ b, int64_t n) {
    const F* __restrict__ a0 = a[0];
    const F* __restrict__ a1 = a[1];
    const F* __restrict__ a2 = a[2];
    const F* __restrict__ a3 = a[3];
    int64_t i = 0;
    for (; i + V <= n; i += V)
      for (int64_t j = 0; j < V; ++j) {
        const F x = b[i + j];
        c[0][j] += a0[i + j] * x;
        c[1][j] += a1[i + j] * x;
        c[2][j] += a2[i + j] * x;
        c[3][j] += a3[i + j] * x;
      }
    for (; i < n; ++i) {
      tail[0] += a0[i] * b[i];
      tail[1] += a1[i] * b[i];
      tail[2] += a2[i] * b[i];
      tail[3] += a3[i] * b[i];
    }
  }

  inline void finish(F* out) {
    for (int64_t w = V / 2; w > 0; w /= 2)
      for (int64_t k = 0; k < 4; ++k)
        for (int64_t j = 0; j < w; ++j) c[k][j] += c[k][j + w];
    for (int64_t k = 0; k < 4; ++k) out[k] += c[k][0] + tail[k];
  }
};

// pre[c] += R[c, :hm] . y'[:hm] (+ with FGR, for each gate q2: Rg[cg, q2*H : q2*H+hm] . s'_q2[:hm]),
// four rows per pass; the last hm % 4 rows one by one.
template <typename F>
void recurrent_forward(const Dims& d, int64_t hm, const F* Wh, const F* Wg, const F* s, F* pre) {
  const int64_t H = d.H, K = d.K(), KH = K * H;
  for (int64_t g = 0; g < d.G(); ++g) {
    const int64_t q = gate_of(d, g);
    const bool gated = d.fgr && q >= 0;
    int64_t u = 0;
    for (; u + 4 <= hm; u += 4) {
      const int64_t c = g * H + u;
      const F* a[4] = {Wh + c * H, Wh + (c + 1) * H, Wh + (c + 2) * H, Wh + (c + 3) * H};
      Dot4<F> acc;
      acc.add(a, s, hm);
      if (gated)
        for (int64_t q2 = 0; q2 < K; ++q2) {
          const F* row = Wg + (q * H + u) * KH + q2 * H;
          const F* ag[4] = {row, row + KH, row + 2 * KH, row + 3 * KH};
          acc.add(ag, s + H + q2 * H, hm);
        }
      acc.finish(pre + c);
    }
    for (; u < hm; ++u) {
      const int64_t c = g * H + u;
      F sum = dot(Wh + c * H, s, hm);
      if (gated)
        for (int64_t q2 = 0; q2 < K; ++q2) sum += dot(Wg + (q * H + u) * KH + q2 * H, s + H + q2 * H, hm);
      pre[c] += sum;
    }
  }
}

// ds[:hm] += sum_c dpre[c] R[c, :hm]  (+ with FGR: ds_q2[:hm] += dpre[c] Rg[cg, q2*H : q2*H+hm]),
// with c ascending for every element (four rows per pass).
// (The same walk over R's and Rg's rows as recurrent_forward, transposed. One walker with a
// callback for both measured 15-25% slower per step, so each keeps its own loops.)
template <typename F>
void recurrent_backward(const Dims& d, int64_t hm, const F* Wh, const F* Wg, const F* dpre, F* ds) {
  const int64_t H = d.H, K = d.K(), KH = K * H;
  for (int64_t g = 0; g < d.G(); ++g) {
    const int64_t q = gate_of(d, g);
    const bool gated = d.fgr && q >= 0;
    int64_t u = 0;
    for (; u + 4 <= hm; u += 4) {
      const int64_t c = g * H + u;
      const F* a[4] = {Wh + c * H, Wh + (c + 1) * H, Wh + (c + 2) * H, Wh + (c + 3) * H};
      axpy4(hm, dpre + c, a, ds);
      if (gated)
        for (int64_t q2 = 0; q2 < K; ++q2) {
          const F* row = Wg + (q * H + u) * KH + q2 * H;
          const F* ag[4] = {row, row + KH, row + 2 * KH, row + 3 * KH};
          axpy4(hm, dpre + c, ag, ds + H + q2 * H);
        }
    }
    for (; u < hm; ++u) {
      const int64_t c = g * H + u;
      axpy(hm, dpre[c], Wh + c * H, ds);
      if (gated)
        for (int64_t q2 = 0; q2 < K; ++q2) axpy(hm, dpre[c], Wg + (q * H + u) * KH + q2 * H, ds + H + q2 * H);
    }
  }
}

template <typename F>
void forward(const Dims& d, F* PRE, F* S, F* ZC, F* HC, const F* Wh, const F* Wg, const F* P, const int64_t* steps,
             const int64_t* hidden) {
  const int64_t M = d.M, B = d.B, H = d.H, GH = d.G() * H, SR = d.SR(), n_if = d.n_if, K = d.K();
  const int64_t HB = H * B, kf = d.has_i ? 1 : 0;  // f's block among the i/f gates
  for (int64_t t = 0; t < d.T; ++t) {
    for (int64_t m = 0; m < M; ++m) {
      if (steps && t >= steps[m]) continue;
      const int64_t hm = hidden ? hidden[m] : H, E = hm * B;  // a member's real (unit, batch) elements
      F* pre = PRE + t * d.pre_t + m * d.pre_m;
      const F* s = S + (t * M + m) * SR * B;
      F* s_next = S + ((t + 1) * M + m) * SR * B;
      const F* c_prev = ZC + ((t * M + m) * 2 + 1) * HB;
      F* z = ZC + ((t * M + m) * 2) * HB;
      F* c = ZC + (((t + 1) * M + m) * 2 + 1) * HB;
      F* hc = d.has_o ? HC + (t * M + m) * HB : s_next;  // no output gate: y = h(c) itself
      const F* p = d.peep ? P + m * K * H : nullptr;  // (K, H): the peepholes (B = 1)
      recurrent_forward<F>(d, hm, Wh + m * GH * H, d.fgr ? Wg + m * K * H * K * H : nullptr, s, pre);  // + R y' (+ Rg s')
      F* i = s_next + HB;
      F* f = s_next + HB + kf * HB;
      if (d.has_i) gate<F>(E, pre, p, c_prev, i);
      if (d.has_f) gate<F>(E, pre + kf * HB, p ? p + kf * HB : nullptr, c_prev, f);
      act<F>(d.g_act, E, pre + n_if * HB, z);
      if (d.coupled) for (int64_t e = 0; e < E; ++e) c[e] = c_prev[e] + i[e] * (z[e] - c_prev[e]);
      else if (d.has_i && d.has_f) for (int64_t e = 0; e < E; ++e) c[e] = z[e] * i[e] + c_prev[e] * f[e];
      else if (d.has_i) for (int64_t e = 0; e < E; ++e) c[e] = c_prev[e] + z[e] * i[e];
      else if (d.has_f) for (int64_t e = 0; e < E; ++e) c[e] = z[e] + c_prev[e] * f[e];
      else for (int64_t e = 0; e < E; ++e) c[e] = z[e] + c_prev[e];
      act<F>(d.h_act, E, c, hc);
      if (d.has_o) {  // the output-gate peephole reads the current cell
        F* o = s_next + HB + n_if * HB;
        gate<F>(E, pre + (n_if + 1) * HB, p ? p + n_if * HB : nullptr, c, o);
        for (int64_t e = 0; e < E; ++e) s_next[e] = hc[e] * o[e];
      }
    }
  }
}

template <typename F>
void backward(const Dims& d, const F* S, const F* ZC, const F* HC, const F* Wh, const F* Wg, const F* P, F* DS, F* dPRE,
              const F* dC, F* DCN, F* scratch, const int64_t* steps, const int64_t* hidden) {
  const int64_t M = d.M, B = d.B, H = d.H, GH = d.G() * H, SR = d.SR(), R = d.R(), n_if = d.n_if, K = d.K();
  const int64_t HB = H * B, kf = d.has_i ? 1 : 0;
  F* dc = scratch;        // (H, B): the gradient reaching c_t
  F* tmp = scratch + HB;  // (H, B)
  for (int64_t t = d.T - 1; t >= 0; --t) {
    for (int64_t m = 0; m < M; ++m) {
      const int64_t last = steps ? steps[m] : d.T;  // the member runs steps t < last
      if (t >= last) continue;
      const int64_t hm = hidden ? hidden[m] : H, E = hm * B;
      F* ds = DS + (t * M + m) * R * B;
      if (t + 1 < last)  // ds += W^T dpre_{t+1}: what step t+1's pre-activations pass back to S[t+1]
        recurrent_backward<F>(d, hm, Wh + m * GH * H, d.fgr ? Wg + m * K * H * K * H : nullptr, dPRE + ((t + 1) * M + m) * GH * B, ds);
      F* dpre = dPRE + (t * M + m) * GH * B;
      const F* s_next = S + ((t + 1) * M + m) * SR * B;
      const F* z = ZC + ((t * M + m) * 2) * HB;
      const F* c_prev = ZC + ((t * M + m) * 2 + 1) * HB;
      const F* hc = d.has_o ? HC + (t * M + m) * HB : s_next;
      const F* p = d.peep ? P + m * K * H : nullptr;
      const F* i = s_next + HB;
      const F* f = s_next + HB + kf * HB;
      F* dcn = DCN + m * HB;  // what c_t passes to c_{t-1}; zero before a member's last step
      const F* dy = ds;
      if (d.has_o) {
        const F* o = s_next + HB + n_if * HB;
        F* dpo = dpre + (n_if + 1) * HB;
        const F* ds_o = ds + HB + n_if * HB;  // FGR: what o_t's activation gets from step t+1
        if (d.fgr) for (int64_t e = 0; e < E; ++e) dpo[e] = (dy[e] * hc[e] + ds_o[e]) * (F(1) - o[e]) * o[e];
        else for (int64_t e = 0; e < E; ++e) dpo[e] = dy[e] * hc[e] * (F(1) - o[e]) * o[e];
        for (int64_t e = 0; e < E; ++e) tmp[e] = dy[e] * o[e];
        act_backward<F>(d.h_act, E, tmp, hc, dc);
        if (p) {
          const F* p_o = p + n_if * HB;
          for (int64_t e = 0; e < E; ++e) dc[e] += dpo[e] * p_o[e];
        }
      } else {
        act_backward<F>(d.h_act, E, dy, hc, dc);
      }
      for (int64_t e = 0; e < E; ++e) dc[e] += dcn[e];
      if (dC) {
        const F* dc_in = dC + (t * M + m) * HB;
        for (int64_t e = 0; e < E; ++e) dc[e] += dc_in[e];
      }
      if (d.has_i) {
        for (int64_t e = 0; e < E; ++e) tmp[e] = dc[e] * i[e];
        act_backward<F>(d.g_act, E, tmp, z, dpre + n_if * HB);
      } else {
        act_backward<F>(d.g_act, E, dc, z, dpre + n_if * HB);
      }
      if (d.has_i) {
        F* dpi = dpre;
        const F* ds_i = ds + HB;
        for (int64_t e = 0; e < E; ++e) {
          const F factor = d.coupled ? z[e] - c_prev[e] : z[e];
          const F da = d.fgr ? dc[e] * factor + ds_i[e] : dc[e] * factor;
          dpi[e] = da * (F(1) - i[e]) * i[e];
        }
      }
      if (d.has_f) {
        F* dpf = dpre + kf * HB;
        const F* ds_f = ds + HB + kf * HB;
        for (int64_t e = 0; e < E; ++e) {
          const F da = d.fgr ? dc[e] * c_prev[e] + ds_f[e] : dc[e] * c_prev[e];
          dpf[e] = da * (F(1) - f[e]) * f[e];
        }
      }
      // What c_{t-1} receives: through c = ... + c' f, and through the i/f peepholes.
      if (d.coupled) for (int64_t e = 0; e < E; ++e) dcn[e] = dc[e] - dc[e] * i[e];
      else if (d.has_f) for (int64_t e = 0; e < E; ++e) dcn[e] = dc[e] * f[e];
      else for (int64_t e = 0; e < E; ++e) dcn[e] = dc[e];
      if (p)
        for (int64_t k = 0; k < n_if; ++k) {
          const F* dp = dpre + k * HB;
          const F* pk = p + k * HB;
          for (int64_t e = 0; e < E; ++e) dcn[e] += dp[e] * pk[e];
        }
    }
  }
}

}  // namespace

extern "C" {

// dims: M, T, B, H, n_if, has_i, has_f, has_o, coupled, peep, fgr, g_act, h_act, pre_t, pre_m (15 int64).
// Pointers may be null where fused.py's buffer is absent (HC without an output gate, P without
// peepholes, steps for "every member runs all T steps", hidden for "every member has H units").
void odyssey_lstm_forward_f32(const int64_t* dims, float* PRE, float* S, float* ZC, float* HC, const float* Wh,
                              const float* Wg, const float* P, const int64_t* steps, const int64_t* hidden) {
  forward<float>(*reinterpret_cast<const Dims*>(dims), PRE, S, ZC, HC, Wh, Wg, P, steps, hidden);
}
void odyssey_lstm_forward_f64(const int64_t* dims, double* PRE, double* S, double* ZC, double* HC, const double* Wh,
                              const double* Wg, const double* P, const int64_t* steps, const int64_t* hidden) {
  forward<double>(*reinterpret_cast<const Dims*>(dims), PRE, S, ZC, HC, Wh, Wg, P, steps, hidden);
}
// DCN: (M, H, B), zero on entry; scratch: (2, H, B).
void odyssey_lstm_backward_f32(const int64_t* dims, const float* S, const float* ZC, const float* HC, const float* Wh,
                               const float* Wg, const float* P, float* DS, float* dPRE, const float* dC, float* DCN, float* scratch,
                               const int64_t* steps, const int64_t* hidden) {
  backward<float>(*reinterpret_cast<const Dims*>(dims), S, ZC, HC, Wh, Wg, P, DS, dPRE, dC, DCN, scratch, steps, hidden);
}
void odyssey_lstm_backward_f64(const int64_t* dims, const double* S, const double* ZC, const double* HC, const double* Wh,
                               const double* Wg, const double* P, double* DS, double* dPRE, const double* dC, double* DCN, double* scratch,
                               const int64_t* steps, const int64_t* hidden) {
  backward<double>(*reinterpret_cast<const Dims*>(dims), S, ZC, HC, Wh, Wg, P, DS, dPRE, dC, DCN, scratch, steps, hidden);
}
// The elementwise activations alone (for the tests of their accuracy): y = act(x), kind as Act.
void odyssey_act_f32(int64_t kind, int64_t n, const float* x, float* y) { act<float>(kind, n, x, y); }
void odyssey_act_f64(int64_t kind, int64_t n, const double* x, double* y) { act<double>(kind, n, x, y); }
int64_t odyssey_lstm_abi() { return 5; }

}
