#pragma once
// Backward pass of BlockDiffusionModel's training forward (model.hpp, forward_train), by
// hand, llm.c style: one backward function per layer, next to the forward it inverts
// (written out in its comment), shapes in the comments. N = batch * 2L rows of [xt, x0],
// Nxt = batch * L rows of the xt half, D hidden, F = 4D, H heads of Dh, C cond_dim.
//
// Gradients are accumulated (+=) into a flat buffer with the parameters' layout
// (ParameterLayout). Weight gradients are Eigen GEMMs (dW += dY^T X, dX = dY W; Eigen
// threads them with OpenMP); row-wise work is OpenMP-parallel; reductions over rows (the
// modulation vectors, norm weights) accumulate per thread in double.
//
// Conditioning (time conditioning off, sigma = 0): e = [1 x128, 0 x128] is fixed,
// c = silu(W2 silu(W1 e + b1) + b2), and every modulation vector is adaLN_modulation(c),
// constant over rows; their gradients are sums over rows, chained back to c and then to
// sigma_map.mlp.{0,2}.
#include <bd3/diffusion/nelbo.hpp>
#include <bd3/error.hpp>
#include <bd3/kernels/kernels.hpp>
#include <bd3/kernels/sgemm.hpp>
#include <bd3/layers/attention_backward.hpp>
#include <bd3/model/model.hpp>

#include <omp.h>
#include <Eigen/Dense>
#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace bd3 {

namespace grad {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class T>
using MapM = Eigen::Map<RowMat<T>>;
template <class T>
using MapCM = Eigen::Map<const RowMat<T>>;
template <class T>
using MapV = Eigen::Map<Vec<T>>;

// ---------------------------------------------------------------------------------------
// Thread-split GEMMs. Eigen's own OpenMP GEMM loses up to 4x on this project's shapes
// (e.g. dW [768, 256] += dY^T X over 2048 rows on 2 cores); splitting the output into one
// contiguous slab per thread, each a single-threaded GEMM (kernels/sgemm.hpp for float
// with AVX-512, else Eigen's, which does not nest inside a parallel region), runs at the
// single-core rate on every core.
template <class T>
using StridedCMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

// Slab [begin, end) of n rows for thread t of nt, in multiples of 16 rows.
inline std::pair<int64_t, int64_t> thread_slab(int64_t n, int t, int nt) {
  const int64_t chunk = ((n + nt - 1) / nt + 15) / 16 * 16;
  const int64_t b = std::min<int64_t>(n, int64_t(t) * chunk);
  return {b, std::min<int64_t>(n, b + chunk)};
}

// dW[out, in] += dY[N, out]^T X[N, in], split over the rows of dW.
template <class T>
void gemm_tn_accumulate(const T* dY, const T* X, int64_t N, int64_t in, int64_t out, T* dW) {
#pragma omp parallel if (N * in * out > (int64_t(1) << 22))
  {
    const auto [o0, o1] = thread_slab(out, omp_get_thread_num(), omp_get_num_threads());
    if constexpr (std::is_same_v<T, float> && kernels::simd::has_gemm_nt) {
      // (kernels/sgemm.hpp; dY^T and X are read in place by its packing)
      if (o1 > o0)
        kernels::simd::gemm({.x = dY + o0,
                             .ldx = out,
                             .x_transposed = true,
                             .w = X,
                             .ldw = in,
                             .w_transposed = true,
                             .y = dW + o0 * in,
                             .ldy = in,
                             .accumulate = true},
                            o1 - o0, N, in);
    } else if (o1 > o0)
      MapM<T>(dW + o0 * in, o1 - o0, in).noalias() +=
          StridedCMap<T>(dY + o0, N, o1 - o0, Eigen::OuterStride<>(out)).transpose() *
          MapCM<T>(X, N, in);
  }
}

// dX[N, in] = dY[N, out] W[out, in], split over the rows of dX.
template <class T>
void gemm_nn(const T* dY, const T* W, int64_t N, int64_t in, int64_t out, T* dX) {
#pragma omp parallel if (N * in * out > (int64_t(1) << 22))
  {
    const auto [r0, r1] = thread_slab(N, omp_get_thread_num(), omp_get_num_threads());
    if constexpr (std::is_same_v<T, float> && kernels::simd::has_gemm_nt) {
      if (r1 > r0)
        kernels::simd::gemm({.x = dY + r0 * out,
                             .ldx = out,
                             .w = W,
                             .ldw = in,
                             .w_transposed = true,
                             .y = dX + r0 * in,
                             .ldy = in},
                            r1 - r0, out, in);
    } else if (r1 > r0)
      MapM<T>(dX + r0 * in, r1 - r0, in).noalias() =
          MapCM<T>(dY + r0 * out, r1 - r0, out) * MapCM<T>(W, out, in);
  }
}

// ---------------------------------------------------------------------------------------
// Linear. Forward: Y[N, out] = X[N, in] W^T + b, W [out, in], b [out] (optional).
// Backward: dW[out, in] += dY^T X;  db[out] += sum_rows dY;  dX[N, in] = dY W (overwritten,
// skipped when dX is null).
template <class T>
void linear_backward(const T* dY, const T* X, int64_t N, int64_t in, int64_t out, const T* W, T* dW,
                     T* db, T* dX) {
  if (N == 0) return;
  gemm_tn_accumulate<T>(dY, X, N, in, out, dW);
  if (db) MapV<T>(db, out).noalias() += MapCM<T>(dY, N, out).transpose() * Vec<T>::Ones(N);
  if (dX) gemm_nn<T>(dY, W, N, in, out, dX);
}

// ---------------------------------------------------------------------------------------
// Embedding. Forward: x[r, :] = E[tok[r], :], E [V, D]. Backward: dE[tok[r], :] += dx[r, :]
// (rows of both halves; a token appearing twice gets both rows).
template <class T>
void embedding_backward(const std::vector<int32_t>& row_tokens, const T* dx, int D, T* dE) {
  // Serial over rows (N D adds): rows sharing a token would race otherwise.
  for (size_t r = 0; r < row_tokens.size(); ++r) {
    T* e = dE + int64_t(row_tokens[r]) * D;
    const T* d = dx + int64_t(r) * D;
    for (int j = 0; j < D; ++j) e[j] += d[j];
  }
}

// ---------------------------------------------------------------------------------------
// Layer norm without affine, then the adaLN modulation (a, b [D] constant over rows).
// Forward (row r): n = (x - mean_r) rstd_r;  y = n * a + b.
// Backward: dn = dy * a;  dx += rstd (dn - mean(dn) - n mean(dn n));
//           da += sum_r dy * n;  db += sum_r dy   (da, db in double).
// `row(r)` gives {x, mean, rstd, dy, dx} of row r in [0, N).
template <class T>
struct NormRow {
  const T* x;
  T mean, rstd;
  const T* dy;
  T* dx;
};

template <class T, class RowFn>
void norm_modulate_backward(int64_t N, int D, const T* a, RowFn row, double* da, double* db) {
#pragma omp parallel if (N * D > 32768)
  {
    std::vector<double> la(D, 0.0), lb(D, 0.0);
    std::vector<T> n(D), dn(D);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      const NormRow<T> w = row(r);
      double s_dn = 0, s_dnn = 0;
      for (int j = 0; j < D; ++j) {
        n[j] = (w.x[j] - w.mean) * w.rstd;
        dn[j] = w.dy[j] * a[j];
        s_dn += dn[j];
        s_dnn += double(dn[j]) * n[j];
        la[j] += double(w.dy[j]) * n[j];
        lb[j] += w.dy[j];
      }
      const T m_dn = T(s_dn / D), m_dnn = T(s_dnn / D);
      for (int j = 0; j < D; ++j) w.dx[j] += w.rstd * (dn[j] - m_dn - n[j] * m_dnn);
    }
#pragma omp critical(bd3_norm_backward)
    for (int j = 0; j < D; ++j) da[j] += la[j], db[j] += lb[j];
  }
}

// ---------------------------------------------------------------------------------------
// Gated residual with optional dropout (keep mask, kept entries scaled by s).
// Forward: x_out = x_in + gate * (keep * s * y), gate [D] constant over rows.
// Backward: dx_in = dx_out (the caller keeps dx);  dgate += sum_r dx * keep * s * y;
//           dy = dx * gate * keep * s   [N, D] (overwritten).
template <class T>
void gated_residual_backward(const T* dx, const T* y, const T* gate, const uint8_t* keep, T s,
                             int64_t N, int D, T* dy, double* dgate) {
#pragma omp parallel if (N * D > 32768)
  {
    std::vector<double> lg(D, 0.0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      const T* dxr = dx + r * D;
      const T* yr = y + r * D;
      T* dyr = dy + r * D;
      if (keep) {
        const uint8_t* kr = keep + r * D;
        for (int j = 0; j < D; ++j) {
          const T m = kr[j] ? s : T(0);
          lg[j] += double(dxr[j]) * (m * yr[j]);
          dyr[j] = dxr[j] * gate[j] * m;
        }
      } else {
        for (int j = 0; j < D; ++j) {
          lg[j] += double(dxr[j]) * yr[j];
          dyr[j] = dxr[j] * gate[j];
        }
      }
    }
#pragma omp critical(bd3_gate_backward)
    for (int j = 0; j < D; ++j) dgate[j] += lg[j];
  }
}

// ---------------------------------------------------------------------------------------
// GELU (tanh approximation). Forward: y = gelu_tanh(x). Backward: dx = dy * gelu'(x),
// in place on d (dy in, dx out), n elements.
// The scalar version uses kernels::scalar::gelu_tanh_grad; the float SIMD version writes
// gelu(x) = x s with s = 1 / (1 + exp(t)), t = x (-2k - 2kc x^2) (as the forward kernel),
// so gelu'(x) = s - x s (1 - s) (-2k - 6kc x^2), s (1 - s) = exp(t) s^2: no tanh, no
// cancellation, no NaN.
template <class T>
void gelu_tanh_backward_scalar(const T* x, T* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] *= kernels::scalar::gelu_tanh_grad<T>(x[i]);
}

inline void gelu_tanh_backward_simd(const float* x, float* d, int64_t n) {
  using batch = xsimd::batch<float>;
  constexpr int64_t lanes = int64_t(batch::size);
  constexpr float m2k = float(-2.0 * 0.7978845608028654);
  constexpr float m2kc = float(-2.0 * 0.7978845608028654 * 0.044715);
  constexpr float m6kc = float(-6.0 * 0.7978845608028654 * 0.044715);
  // s (1 - s) = e s^2 (no cancellation when s is near 1). Past |x| = 10, gelu' is 0 or 1
  // to float precision; the clamp keeps exp(t) finite (|t| < 88), so no 0 * inf.
  auto one = [&](auto x_in) {
    using V = decltype(x_in);
    V xv;
    if constexpr (std::is_same_v<V, float>)
      xv = std::clamp(x_in, -10.f, 10.f);
    else
      xv = xsimd::min(xsimd::max(x_in, V(-10.f)), V(10.f));
    const V x2 = xv * xv;
    const V t = xv * (V(m2k) + V(m2kc) * x2);
    V e;
    if constexpr (std::is_same_v<V, float>)
      e = std::exp(t);
    else
      e = xsimd::exp(t);
    const V s = V(1.f) / (V(1.f) + e);
    return s - xv * (e * s * s) * (V(m2k) + V(m6kc) * x2);
  };
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const batch g = one(batch::load_unaligned(x + i));
    (batch::load_unaligned(d + i) * g).store_unaligned(d + i);
  }
  for (; i < n; ++i) d[i] *= one(x[i]);
}

template <class T>
void gelu_tanh_backward(const T* x, T* d, int64_t n) {
  constexpr int64_t chunk = 16384;
#pragma omp parallel for schedule(static) if (n > 4 * chunk)
  for (int64_t c = 0; c < n; c += chunk) {
    const int64_t m = std::min(chunk, n - c);
    if constexpr (kernels::use_simd<T>)
      gelu_tanh_backward_simd(x + c, d + c, m);
    else
      gelu_tanh_backward_scalar<T>(x + c, d + c, m);
  }
}

// ---------------------------------------------------------------------------------------
// Rotary. Forward: q and k of every head of row r rotated by the angles of position pos(r)
// (qkv [N, 3D], v untouched). Backward: dq, dk rotated back (kernels::rotary_transpose).
template <class T, class PosFn>
void rotary_backward(T* dqkv, int64_t N, int D, int H, int Dh, PosFn pos, const std::vector<T>& cos,
                     const std::vector<T>& sin) {
  const int half = Dh / 2;
#pragma omp parallel for schedule(static) if (N * D > 32768)
  for (int64_t i = 0; i < N; ++i) {
    const int p = pos(i);
    const T* c = cos.data() + size_t(p) * half;
    const T* s = sin.data() + size_t(p) * half;
    for (int h = 0; h < H; ++h) {
      kernels::rotary_transpose<T>(dqkv + i * 3 * D + h * Dh, c, s, Dh);
      kernels::rotary_transpose<T>(dqkv + i * 3 * D + D + h * Dh, c, s, Dh);
    }
  }
}

// ---------------------------------------------------------------------------------------
// adaLN modulation. Forward: mod[M] = W c + b, W [M, C], c [C]; the norm scale uses
// a = norm_w * (1 + scale). Backward: dW += dmod (x) c;  db += dmod;  dc += W^T dmod.
template <class T>
void modulation_backward(const double* dmod, int M, const T* W, const std::vector<T>& c, T* dW,
                         T* db, std::vector<double>& dc) {
  const int C = int(c.size());
  for (int i = 0; i < M; ++i) {
    const double g = dmod[i];
    db[i] += T(g);
    T* dw = dW + int64_t(i) * C;
    const T* w = W + int64_t(i) * C;
    for (int j = 0; j < C; ++j) {
      dw[j] += T(g * double(c[j]));
      dc[j] += g * double(w[j]);
    }
  }
}

// Norm weight and scale. Forward: a = norm_w * (1 + scale). Backward (da given):
// dnorm_w += da * (1 + scale);  dscale = da * norm_w (written).
template <class T>
void norm_scale_backward(const double* da, int D, const T* norm_w, const T* scale, T* dnorm_w,
                         double* dscale) {
  for (int j = 0; j < D; ++j) {
    dnorm_w[j] += T(da[j] * (1.0 + double(scale[j])));
    dscale[j] = da[j] * double(norm_w[j]);
  }
}

// ---------------------------------------------------------------------------------------
// Conditioning MLP (sigma = 0). Forward: hid = W1 e + b1 [C] (sigma_hidden), W1 [C, 256];
// c1 = silu(hid); out = W2 c1 + b2 [C] (sigma_out); c = silu(out).
// Backward (dc given): dout = dc silu'(out); dW2 += dout (x) c1; db2 += dout;
// dc1 = W2^T dout; dhid = dc1 silu'(hid); dW1 += dhid (x) e; db1 += dhid.
inline double silu_grad(double x) {
  const double s = 1.0 / (1.0 + std::exp(-x));
  return s * (1.0 + x * (1.0 - s));
}

template <class T>
void conditioning_backward(const std::vector<double>& dc, const std::vector<T>& hid,
                           const std::vector<T>& out, const T* W2, T* dW1, T* db1, T* dW2, T* db2) {
  const int C = int(dc.size());
  std::vector<double> dout(C), dc1(C, 0.0);
  for (int i = 0; i < C; ++i) dout[i] = dc[i] * silu_grad(double(out[i]));
  for (int i = 0; i < C; ++i) {
    db2[i] += T(dout[i]);
    for (int j = 0; j < C; ++j) {
      const double c1 = double(kernels::scalar::silu(hid[j]));
      dW2[int64_t(i) * C + j] += T(dout[i] * c1);
      dc1[j] += dout[i] * double(W2[int64_t(i) * C + j]);
    }
  }
  for (int i = 0; i < C; ++i) {
    const double dh = dc1[i] * silu_grad(double(hid[i]));
    db1[i] += T(dh);
    for (int j = 0; j < 128; ++j)
      dW1[int64_t(i) * 256 + j] += T(dh);  // e_j = 1 for j < 128, 0 after
  }
}

}  // namespace grad

// Scratch buffers of backward(), reusable across calls (they keep their capacity).
template <class T>
struct BackwardScratch {
  std::vector<T> dx;                      // [N, D] gradient of the residual stream
  std::vector<T> dy;                      // [N, D] gradient of a branch output
  std::vector<T> dh;                      // [N, D] gradient of a normed input / attention output
  std::vector<T> dff;                     // [N, F] gradient of the MLP hidden layer
  std::vector<T> dqkv;                    // [N, 3D]
  std::vector<T> g_dlogits, g_hf, g_dhf;  // output layer, rows with a gradient only
  std::vector<int64_t> active;
  std::vector<int32_t> row_tokens;
  // Wall seconds spent per phase, accumulated over calls (profiling; reset at will):
  // 0 output layer, 1 MLP GEMMs + GELU, 2 attention projections (qkv, out),
  // 3 attention core, 4 norms, gates, rotary, 5 embedding + conditioning.
  std::array<double, 6> seconds{};
};

// Accumulates (+=) into grads (size layout.total(), the parameters' layout) the gradient
// given dlogits [batch*L, V] (d loss / d act.logits) for the activations of
// model.forward_train(xt, x0, batch, act, /*keep_for_backward=*/true[, dropout]).
template <class Model>
void backward(const Model& model, std::span<const int32_t> xt, std::span<const int32_t> x0,
              const TrainActivations<typename Model::scalar_type>& act,
              std::span<const typename Model::scalar_type> dlogits,
              std::span<typename Model::scalar_type> grads,
              BackwardScratch<typename Model::scalar_type>* scratch = nullptr) {
  using T = typename Model::scalar_type;
  using Attention = typename Model::attention_type;
  const auto& cfg = model.config();
  const auto& lay = model.layout();
  const int L = cfg.model_length, D = cfg.hidden_dim, H = cfg.n_heads, Dh = cfg.head_dim(),
            F = 4 * D;
  const int V = cfg.vocab_size, n_layers = cfg.n_blocks;
  const int batch = act.batch, rows_seq = 2 * L;
  const int64_t N = int64_t(batch) * rows_seq, Nxt = int64_t(batch) * L;
  if (batch < 1 || act.rows_per_sequence != rows_seq || int(act.layers.size()) != n_layers ||
      act.layers[0].x_in.size() != size_t(N) * D)
    fail("backward: the activations must come from forward_train(..., keep_for_backward = true)");
  if (xt.size() != size_t(Nxt) || x0.size() != size_t(Nxt))
    fail("backward: xt and x0 must hold batch x L tokens");
  if (dlogits.size() != size_t(Nxt) * V) fail("backward: dlogits must be [batch*L, V]");
  if (grads.size() != size_t(lay.total()))
    fail("backward: grads must have the parameter layout's size");
  BackwardScratch<T> local;
  BackwardScratch<T>& s = scratch ? *scratch : local;
  T* g = grads.data();
  auto W = [&](int64_t off) { return model.param(off); };
  const bool adaln = cfg.adaln;
  const int C = cfg.cond_dim;
  std::vector<double> dcond(adaln ? C : 0, 0.0);
  auto clock_mark = std::chrono::steady_clock::now();
  auto tick = [&](int phase) {  // charges the time since the last tick to `phase`
    const auto now = std::chrono::steady_clock::now();
    s.seconds[size_t(phase)] += std::chrono::duration<double>(now - clock_mark).count();
    clock_mark = now;
  };

  s.dx.assign(size_t(N) * D, T(0));
  s.dy.resize(size_t(N) * D);
  s.dh.resize(size_t(N) * D);
  s.dff.resize(size_t(N) * F);
  s.dqkv.resize(size_t(N) * 3 * D);

  // ---- Output layer, xt rows only. Forward: hf = LN(x) * a_f + shift_f [Nxt, D];
  // logits = hf W_out^T + b_out [Nxt, V]. Rows whose dlogits are all zero (unmasked
  // positions under SUBS) are skipped.
  {
    std::vector<uint8_t> nonzero(size_t(Nxt), 0);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < Nxt; ++r) {
      const T* d = dlogits.data() + r * V;
      for (int v = 0; v < V; ++v)
        if (d[v] != T(0)) {
          nonzero[r] = 1;
          break;
        }
    }
    s.active.clear();
    for (int64_t r = 0; r < Nxt; ++r)
      if (nonzero[r]) s.active.push_back(r);
    const int64_t R = int64_t(s.active.size());
    const T* G = dlogits.data();
    const T* Hf = act.hf.data();
    if (R < Nxt) {
      s.g_dlogits.resize(size_t(R) * V);
      s.g_hf.resize(size_t(R) * D);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < R; ++i) {
        const int64_t r = s.active[i];
        std::copy(dlogits.data() + r * V, dlogits.data() + (r + 1) * V, s.g_dlogits.data() + i * V);
        std::copy(act.hf.data() + r * D, act.hf.data() + (r + 1) * D, s.g_hf.data() + i * D);
      }
      G = s.g_dlogits.data();
      Hf = s.g_hf.data();
    }
    s.g_dhf.resize(size_t(R) * D);
    grad::linear_backward<T>(G, Hf, R, D, V, W(lay.out_w), g + lay.out_w, g + lay.out_b,
                             s.g_dhf.data());
    std::vector<double> da(D, 0.0), dshift(D, 0.0);
    grad::norm_modulate_backward<T>(
        R, D, model.final_a().data(),
        [&](int64_t i) {
          const int64_t r = s.active[i];
          const int64_t row = (r / L) * rows_seq + r % L;
          return grad::NormRow<T>{act.x_out.data() + row * D, act.lnf_mean[r], act.lnf_rstd[r],
                                  s.g_dhf.data() + i * D, s.dx.data() + row * D};
        },
        da.data(), dshift.data());
    std::vector<double> dmod(2 * size_t(D));
    std::copy(dshift.begin(), dshift.end(), dmod.begin());
    grad::norm_scale_backward<T>(da.data(), D, W(lay.norm_final), model.final_scale().data(),
                                 g + lay.norm_final, dmod.data() + D);
    if (adaln)
      grad::modulation_backward<T>(dmod.data(), 2 * D, W(lay.out_ada_w), model.conditioning(),
                                   g + lay.out_ada_w, g + lay.out_ada_b, dcond);
    tick(0);
  }

  // ---- Transformer layers, last to first; s.dx is the gradient at the layer's output
  // on entry and at its input on exit.
  std::vector<T> cos, sin;
  model.rotary_table(0, L, cos, sin);
  const TrainingMask mask{L, model.block_size()};
  const T keep_scale = T(1.0 / (1.0 - act.dropout.p));
  std::vector<double> dmod(6 * size_t(D)), da1(D), da2(D);
  for (int l = n_layers - 1; l >= 0; --l) {
    const auto& a = act.layers[l];
    const auto& m = model.modulations()[l];
    const auto& o = lay.layers[l];
    std::fill(dmod.begin(), dmod.end(), 0.0);
    std::fill(da1.begin(), da1.end(), 0.0);
    std::fill(da2.begin(), da2.end(), 0.0);
    double* dshift1 = dmod.data();
    double* dscale1 = dmod.data() + D;
    double* dgate1 = dmod.data() + 2 * D;
    double* dshift2 = dmod.data() + 3 * D;
    double* dscale2 = dmod.data() + 4 * D;
    double* dgate2 = dmod.data() + 5 * D;
    const uint8_t* keep_mlp = a.keep_mlp.empty() ? nullptr : a.keep_mlp.data();
    const uint8_t* keep_attn = a.keep_attn.empty() ? nullptr : a.keep_attn.data();

    // Rows whose residual gradient can be nonzero at this layer's output: all, except at
    // the last layer, where only the xt rows reach the loss (the x0 rows' MLP and attention
    // output feed nothing; their keys and values still get gradients, below).
    std::vector<std::pair<int64_t, int64_t>> slabs;  // (first row, rows)
    if (l == n_layers - 1) {
      for (int b = 0; b < batch; ++b) slabs.push_back({int64_t(b) * rows_seq, L});
      // dO of the x0 rows is zero: no gradient reaches them through attention.
      for (int b = 0; b < batch; ++b)
        std::fill(s.dh.begin() + (int64_t(b) * rows_seq + L) * D,
                  s.dh.begin() + (int64_t(b) + 1) * rows_seq * D, T(0));
    } else {
      slabs.push_back({0, N});
    }

    for (const auto& [r0, n] : slabs) {
      // MLP branch. Forward: x_out = x_mid + gate2 * drop(mlp_out);
      // mlp_out = gelu(h2 W0^T + b0) W2^T + b2;  h2 = LN(x_mid) * a2 + shift2.
      grad::gated_residual_backward<T>(s.dx.data() + r0 * D, a.mlp_out.data() + r0 * D,
                                       m.gate2.data(), keep_mlp ? keep_mlp + r0 * D : nullptr,
                                       keep_scale, n, D, s.dy.data() + r0 * D, dgate2);
      tick(4);
      grad::linear_backward<T>(s.dy.data() + r0 * D, a.mlp_act.data() + r0 * F, n, F, D,
                               W(o.mlp2_w), g + o.mlp2_w, g + o.mlp2_b, s.dff.data() + r0 * F);
      grad::gelu_tanh_backward<T>(a.mlp_pre.data() + r0 * F, s.dff.data() + r0 * F, n * F);
      grad::linear_backward<T>(s.dff.data() + r0 * F, a.h2.data() + r0 * D, n, D, F, W(o.mlp0_w),
                               g + o.mlp0_w, g + o.mlp0_b, s.dh.data() + r0 * D);
      tick(1);
      grad::norm_modulate_backward<T>(
          n, D, m.a2.data(),
          [&, r0 = r0](int64_t i) {
            const int64_t r = r0 + i;
            return grad::NormRow<T>{a.x_mid.data() + r * D, a.ln2_mean[r], a.ln2_rstd[r],
                                    s.dh.data() + r * D, s.dx.data() + r * D};
          },
          da2.data(), dshift2);

      // Attention branch. Forward: x_mid = x_in + gate1 * drop(att W_out^T);
      // att = attention(rotary(q), rotary(k), v);  [q k v] = h1 W_qkv^T;  h1 = LN(x_in) * a1 +
      // shift1.
      grad::gated_residual_backward<T>(s.dx.data() + r0 * D, a.attn_proj.data() + r0 * D,
                                       m.gate1.data(), keep_attn ? keep_attn + r0 * D : nullptr,
                                       keep_scale, n, D, s.dy.data() + r0 * D, dgate1);
      tick(4);
      grad::linear_backward<T>(s.dy.data() + r0 * D, a.att.data() + r0 * D, n, D, D, W(o.attn_out),
                               g + o.attn_out, nullptr, s.dh.data() + r0 * D);
      tick(2);
    }
    std::fill(s.dqkv.begin(), s.dqkv.end(), T(0));
    for (int b = 0; b < batch; ++b) {
      const int64_t r0 = int64_t(b) * rows_seq;
      AttentionGradArgs<T> args;
      args.q = a.qkv.data() + r0 * 3 * D, args.k = args.q + D, args.v = args.q + 2 * D;
      args.ldq = args.ldk = args.ldv = 3 * D;
      args.out = a.att.data() + r0 * D, args.ldo = D;
      args.dout = s.dh.data() + r0 * D, args.lddo = D;
      args.lse = a.lse.data() + size_t(b) * H * rows_seq;
      args.dq = s.dqkv.data() + r0 * 3 * D, args.dk = args.dq + D, args.dv = args.dq + 2 * D;
      args.lddq = args.lddk = args.lddv = 3 * D;
      args.nq = args.nk = rows_seq, args.n_heads = H, args.head_dim = Dh;
      attention_backward<Attention>(args, mask);
    }
    tick(3);
    grad::rotary_backward<T>(
        s.dqkv.data(), N, D, H, Dh, [L](int64_t i) { return int(i % L); }, cos, sin);
    tick(4);
    grad::linear_backward<T>(s.dqkv.data(), a.h1.data(), N, D, 3 * D, W(o.attn_qkv), g + o.attn_qkv,
                             nullptr, s.dh.data());
    tick(2);
    grad::norm_modulate_backward<T>(
        N, D, m.a1.data(),
        [&](int64_t r) {
          return grad::NormRow<T>{a.x_in.data() + r * D, a.ln1_mean[r], a.ln1_rstd[r],
                                  s.dh.data() + r * D, s.dx.data() + r * D};
        },
        da1.data(), dshift1);

    // Norm weights and modulation vectors: a1 = norm1 (1 + scale1), a2 = norm2 (1 + scale2).
    grad::norm_scale_backward<T>(da1.data(), D, W(o.norm1), m.scale1.data(), g + o.norm1, dscale1);
    grad::norm_scale_backward<T>(da2.data(), D, W(o.norm2), m.scale2.data(), g + o.norm2, dscale2);
    if (adaln)
      grad::modulation_backward<T>(dmod.data(), 6 * D, W(o.ada_w), model.conditioning(),
                                   g + o.ada_w, g + o.ada_b, dcond);
    tick(4);
  }

  // ---- Embedding of [xt, x0].
  s.row_tokens.resize(size_t(N));
  for (int b = 0; b < batch; ++b)
    for (int i = 0; i < rows_seq; ++i)
      s.row_tokens[size_t(b) * rows_seq + i] =
          i < L ? xt[size_t(b) * L + i] : x0[size_t(b) * L + i - L];
  grad::embedding_backward<T>(s.row_tokens, s.dx.data(), D, g + lay.embedding);

  // ---- Conditioning MLP.
  if (adaln)
    grad::conditioning_backward<T>(dcond, model.sigma_hidden(), model.sigma_out(), W(lay.sigma2_w),
                                   g + lay.sigma0_w, g + lay.sigma0_b, g + lay.sigma2_w,
                                   g + lay.sigma2_b);
  tick(5);
}

// Everything one training step's gradient needs, reusable across steps.
template <class T>
struct TrainScratch {
  TrainActivations<T> act;
  std::vector<T> dlogits;
  BackwardScratch<T> backward;
};

// forward_train (keeping activations) + subs_nelbo + backward. weight [batch*L]: the loss
// weight w(t) of each position's block. The loss is the mean over positions 1..L-1 of every
// sequence (the fixtures' nelbo_mean), so the gradient scale is 1 / (batch (L-1)).
// Accumulates (+=) its gradient into grads and returns the mean loss.
template <class Model>
double loss_and_gradient(const Model& model, std::span<const int32_t> xt,
                         std::span<const int32_t> x0, int batch, std::span<const double> weight,
                         std::span<typename Model::scalar_type> grads, Dropout dropout = {},
                         TrainScratch<typename Model::scalar_type>* scratch = nullptr) {
  using T = typename Model::scalar_type;
  const auto& cfg = model.config();
  const int L = cfg.model_length, V = cfg.vocab_size;
  if (L < 2) fail("loss_and_gradient: model_length must be >= 2 (position 0 is never counted)");
  TrainScratch<T> local;
  TrainScratch<T>& s = scratch ? *scratch : local;
  model.forward_train(xt, x0, batch, s.act, /*keep_for_backward=*/true, dropout);
  const int64_t tokens = int64_t(batch) * (L - 1);
  s.dlogits.resize(size_t(batch) * L * V);
  const NelboTerms terms = subs_nelbo<T>(s.act.logits, xt, x0, weight, L, V, cfg.mask_index,
                                         nullptr, s.dlogits.data(), 1.0 / double(tokens));
  backward(model, xt, x0, s.act, std::span<const T>(s.dlogits), grads, &s.backward);
  return terms.loss_sum / double(terms.tokens);
}

}  // namespace bd3
