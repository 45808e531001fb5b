#pragma once
// The DiT block of BD3-LMs (SPEC "Network"), written once: its forward and its backward,
// composed from the layer pairs of this directory. Every pass of the model runs it:
//   - the training forward over [xt, x0] under the block-diffusion mask (and its backward),
//   - the uncached reference forward under the banded block-causal mask,
//   - the KV-cached decode of one block (and the commit of a clean block).
// The passes differ only in what a Pass supplies (below): how a linear layer reads its
// weights (the GEMM on the parameters, or the decode kernels on a packed copy), where
// keys and values come from and go to (the rows of this call, or the KV cache), and which
// position each row has.
//
// Forward of one block, N rows, D hidden, H heads of Dh, F = 4D:
//   h1  = LN(x) * a1 + shift1                     [N, D]    norm.hpp
//   qkv = h1 W_qkv^T, rotary(q, k)                [N, 3D]   linear.hpp, rotary.hpp
//   att = attention(q, k, v)                      [N, D]    Pass::attention
//   x_mid = x + gate1 * drop(att W_out^T)         [N, D]    residual.hpp
//   h2  = LN(x_mid) * a2 + shift2                 [N, D]
//   act = gelu(h2 W0^T + b0)                      [N, F]    gelu.hpp
//   x_out = x_mid + gate2 * drop(act W2^T + b2)   [N, D]
#include <bd3/layers/conditioning.hpp>
#include <bd3/layers/gelu.hpp>
#include <bd3/layers/linear.hpp>
#include <bd3/layers/norm.hpp>
#include <bd3/layers/residual.hpp>
#include <bd3/layers/rotary.hpp>
#include <bd3/model/parameters.hpp>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace bd3 {

// Where a block's activations live in its slice of an activation arena (offsets in
// elements), llm.c style: one flat buffer per pass, one layout table, as the parameters.
// N rows, D hidden, F = 4D. A pass that does not keep the block's input (decode) or the
// MLP's value before GELU (a pass that fuses GELU) gives those no room.
struct BlockActivationLayout {
  int64_t x_in = 0;                    // [N, D] residual stream entering the block
  int64_t ln1_mean = 0, ln1_rstd = 0;  // [N]
  int64_t h1 = 0;                      // [N, D] LN1 output after adaLN modulation
  int64_t qkv = 0;                     // [N, 3D] q and k after rotary, v
  int64_t lse = 0;                     // [lse_size] attention log-sum-exp (batch, H, rows)
  int64_t att = 0;                     // [N, D] attention output (heads concatenated)
  int64_t attn_proj = 0;               // [N, D] att W_out^T (before the gate)
  int64_t x_mid = 0;                   // [N, D] residual after attention
  int64_t ln2_mean = 0, ln2_rstd = 0;  // [N]
  int64_t h2 = 0;                      // [N, D] LN2 output after modulation
  int64_t mlp_pre = 0;                 // [N, F] before GELU
  int64_t mlp_act = 0;                 // [N, F] after GELU
  int64_t mlp_out = 0;                 // [N, D] (before the gate)
  int64_t total = 0;
  int64_t N = 0, D = 0, lse_size = 0;
  bool keep_input = true, keep_pre = true;

  BlockActivationLayout() = default;
  BlockActivationLayout(int64_t rows, int64_t hidden, int64_t lse_elements, bool input, bool pre)
      : N(rows), D(hidden), lse_size(lse_elements), keep_input(input), keep_pre(pre) {
    const int64_t F = 4 * D;
    auto add = [&](int64_t n) { return std::exchange(total, total + n); };
    x_in = add(keep_input ? N * D : 0);
    ln1_mean = add(N), ln1_rstd = add(N), h1 = add(N * D), qkv = add(N * 3 * D);
    lse = add(lse_size), att = add(N * D), attn_proj = add(N * D), x_mid = add(N * D);
    ln2_mean = add(N), ln2_rstd = add(N), h2 = add(N * D);
    mlp_pre = add(keep_pre ? N * F : 0), mlp_act = add(N * F), mlp_out = add(N * D);
  }
};

// One block's activations: views of its slice of an arena, by the layout above, and the
// dropout keep masks (1 = kept) of attn_proj and mlp_out, [N, D] each (empty without).
template <class T>
struct LayerActivations {
  std::span<T> x_in, ln1_mean, ln1_rstd, h1, qkv, lse, att, attn_proj, x_mid, ln2_mean, ln2_rstd,
      h2, mlp_pre, mlp_act, mlp_out;
  std::vector<uint8_t> keep_attn, keep_mlp;

  // Views of `slice` (layout.total elements) by `layout`.
  void bind(T* slice, const BlockActivationLayout& l) {
    const int64_t N = l.N, D = l.D, F = 4 * D;
    auto at = [&](int64_t offset, int64_t n) { return std::span<T>(slice + offset, size_t(n)); };
    x_in = at(l.x_in, l.keep_input ? N * D : 0);
    ln1_mean = at(l.ln1_mean, N), ln1_rstd = at(l.ln1_rstd, N), h1 = at(l.h1, N * D);
    qkv = at(l.qkv, N * 3 * D), lse = at(l.lse, l.lse_size), att = at(l.att, N * D);
    attn_proj = at(l.attn_proj, N * D), x_mid = at(l.x_mid, N * D);
    ln2_mean = at(l.ln2_mean, N), ln2_rstd = at(l.ln2_rstd, N), h2 = at(l.h2, N * D);
    mlp_pre = at(l.mlp_pre, l.keep_pre ? N * F : 0), mlp_act = at(l.mlp_act, N * F);
    mlp_out = at(l.mlp_out, N * D);
  }
};

// An arena holding the activations of `blocks` blocks of one layout.
template <class T>
struct ActivationArena {
  BlockActivationLayout layout;
  std::vector<T> buffer;
  std::vector<LayerActivations<T>> layers;  // one per block

  ActivationArena() = default;
  ActivationArena(const ActivationArena&) = delete;  // the views point into buffer
  ActivationArena& operator=(const ActivationArena&) = delete;
  ActivationArena(ActivationArena&&) = default;
  ActivationArena& operator=(ActivationArena&&) = default;

  // Sizes the arena for `n` blocks of layout `l` (keeping its capacity across calls).
  void reset(const BlockActivationLayout& l, int n) {
    layout = l;
    buffer.resize(size_t(l.total) * size_t(n));
    layers.resize(size_t(n));
    for (int i = 0; i < n; ++i) layers[size_t(i)].bind(buffer.data() + l.total * i, l);
  }
};

// One block's weights: offsets into the flat parameters, and its modulation vectors.
template <class T>
struct BlockWeights {
  const T* params;  // the flat parameters
  const LayerOffsets& offsets;
  const Modulation<T>& mod;
  const T* at(int64_t offset) const { return params + offset; }
};

// What a pass supplies to the block's forward.
//  - linear(x, N, in, w_offset, bias, out, y): y = x W^T + b with W at w_offset;
//  - linear_gelu(x, N, in, w_offset, bias, out, pre, act): act = gelu(x W^T + b), and pre
//    the value before GELU when the pass keeps it (keep_pre);
//  - position(r): the rotary table row of row r; cos(), sin(): the table;
//  - attention(qkv, att, lse): att [N, D] from qkv [N, 3D], and the log-sum-exp of each
//    query's scores into lse ([lse_size()], empty when the pass keeps none);
//  - keep_input: whether the block stores its input rows x_in (for a backward).
template <class P, class T>
concept BlockPass = requires(P& p, const T* x, T* y, std::span<T> buf, int64_t r) {
  p.linear(x, r, r, r, x, r, y);
  p.linear_gelu(x, r, r, r, x, r, buf, buf);
  { p.position(r) } -> std::convertible_to<int>;
  { p.cos() } -> std::convertible_to<const std::vector<T>&>;
  { p.sin() } -> std::convertible_to<const std::vector<T>&>;
  p.attention(std::span<const T>(buf), buf, buf);
  { p.lse_size() } -> std::convertible_to<int64_t>;
  { P::keep_input } -> std::convertible_to<bool>;
  { P::keep_pre } -> std::convertible_to<bool>;
};

// The activation layout of one block of a pass over N rows.
template <class T, BlockPass<T> Pass>
BlockActivationLayout block_activation_layout(const Pass& pass, int64_t N, int D) {
  return BlockActivationLayout(N, D, pass.lse_size(), Pass::keep_input, Pass::keep_pre);
}

// Forward of one block over N rows, in place on the residual stream x [N, D].
template <class T, BlockPass<T> Pass>
void dit_block_forward(const BlockWeights<T>& w, int D, int H, std::vector<T>& x, int64_t N,
                       LayerActivations<T>& a, Pass& pass, const Dropout& dropout, int layer) {
  const int Dh = D / H, F = 4 * D;
  const auto& o = w.offsets;
  const auto& m = w.mod;
  if constexpr (Pass::keep_input) std::copy(x.begin(), x.end(), a.x_in.begin());
  // Attention branch.
  layers::norm_modulate_forward<T>(x.data(), N, D, m.a1.data(), m.shift1.data(), a.h1.data(),
                                   a.ln1_mean.data(), a.ln1_rstd.data());
  pass.linear(a.h1.data(), N, D, o.attn_qkv, nullptr, 3 * D, a.qkv.data());
  layers::rotary_forward<T>(
      a.qkv.data(), N, D, H, Dh, [&](int64_t r) { return pass.position(r); }, pass.cos(),
      pass.sin());
  pass.attention(std::span<const T>(a.qkv), a.att, a.lse);
  pass.linear(a.att.data(), N, D, o.attn_out, nullptr, D, a.attn_proj.data());
  std::copy(x.begin(), x.end(), a.x_mid.begin());
  layers::gated_residual_forward<T>(a.x_mid.data(), N, D, m.gate1.data(), a.attn_proj.data(),
                                    dropout, layer, 0, a.keep_attn);
  // MLP branch.
  layers::norm_modulate_forward<T>(a.x_mid.data(), N, D, m.a2.data(), m.shift2.data(), a.h2.data(),
                                   a.ln2_mean.data(), a.ln2_rstd.data());
  pass.linear_gelu(a.h2.data(), N, D, o.mlp0_w, w.at(o.mlp0_b), F, a.mlp_pre, a.mlp_act);
  pass.linear(a.mlp_act.data(), N, F, o.mlp2_w, w.at(o.mlp2_b), D, a.mlp_out.data());
  std::copy(a.x_mid.begin(), a.x_mid.end(), x.begin());
  layers::gated_residual_forward<T>(x.data(), N, D, m.gate2.data(), a.mlp_out.data(), dropout,
                                    layer, 1, a.keep_mlp);
}

// What the block's backward accumulates besides the parameter gradients: the gradients of
// its modulation vectors and folded norm scales (double, summed over rows).
struct BlockModulationGrads {
  std::vector<double> dmod;  // [6D]: shift1 scale1 gate1 shift2 scale2 gate2
  std::vector<double> da1, da2;
  void reset(int D) {
    dmod.assign(6 * size_t(D), 0.0);
    da1.assign(D, 0.0);
    da2.assign(D, 0.0);
  }
};

// Scratch of the block's backward (kept across calls for their capacity).
template <class T>
struct BlockBackwardScratch {
  std::vector<T> dy;    // [N, D] gradient of a branch output
  std::vector<T> dh;    // [N, D] gradient of a normed input / of the attention output
  std::vector<T> dff;   // [N, F] gradient of the MLP hidden layer
  std::vector<T> dqkv;  // [N, 3D]
};

// Backward of one block. dx [N, D]: the gradient at the block's output on entry, at its
// input on exit. grads: the flat gradient buffer (+=). `slabs` (first row, rows): the rows
// whose output gradient can be nonzero (the branches' backward runs only on them; the
// caller zeroes dh outside them); attention_backward(dh, dqkv) runs the attention's
// backward from dh = dL/d att into dqkv (zeroed before). `seconds[phase]` collects wall
// time: 1 MLP, 2 attention projections, 3 attention core, 4 norms, gates, rotary.
template <class T, class PosFn, class AttentionBackwardFn, class Tick>
void dit_block_backward(const BlockWeights<T>& w, int D, int H, const LayerActivations<T>& a,
                        T keep_scale, std::span<const std::pair<int64_t, int64_t>> slabs, int64_t N,
                        PosFn pos, const std::vector<T>& cos, const std::vector<T>& sin,
                        AttentionBackwardFn attention_backward, T* grads, std::vector<T>& dx,
                        BlockBackwardScratch<T>& s, BlockModulationGrads& mg, Tick tick) {
  const int Dh = D / H, F = 4 * D;
  const auto& o = w.offsets;
  const auto& m = w.mod;
  T* g = grads;
  double* dshift1 = mg.dmod.data();
  double* dscale1 = mg.dmod.data() + D;
  double* dgate1 = mg.dmod.data() + 2 * D;
  double* dshift2 = mg.dmod.data() + 3 * D;
  double* dscale2 = mg.dmod.data() + 4 * D;
  double* dgate2 = mg.dmod.data() + 5 * D;
  const uint8_t* keep_mlp = a.keep_mlp.empty() ? nullptr : a.keep_mlp.data();
  const uint8_t* keep_attn = a.keep_attn.empty() ? nullptr : a.keep_attn.data();

  for (const auto& [r0, n] : slabs) {
    // MLP branch: x_out = x_mid + gate2 * drop(mlp_out).
    layers::gated_residual_backward<T>(dx.data() + r0 * D, a.mlp_out.data() + r0 * D,
                                       m.gate2.data(), keep_mlp ? keep_mlp + r0 * D : nullptr,
                                       keep_scale, n, D, s.dy.data() + r0 * D, dgate2);
    tick(4);
    layers::linear_backward<T>(s.dy.data() + r0 * D, a.mlp_act.data() + r0 * F, n, F, D,
                               w.at(o.mlp2_w), g + o.mlp2_w, g + o.mlp2_b, s.dff.data() + r0 * F);
    layers::gelu_backward<T>(a.mlp_pre.data() + r0 * F, s.dff.data() + r0 * F, n * F);
    layers::linear_backward<T>(s.dff.data() + r0 * F, a.h2.data() + r0 * D, n, D, F, w.at(o.mlp0_w),
                               g + o.mlp0_w, g + o.mlp0_b, s.dh.data() + r0 * D);
    tick(1);
    layers::norm_modulate_backward<T>(
        n, D, m.a2.data(),
        [&, r0 = r0](int64_t i) {
          const int64_t r = r0 + i;
          return layers::NormRow<T>{a.x_mid.data() + r * D, a.ln2_mean[r], a.ln2_rstd[r],
                                    s.dh.data() + r * D, dx.data() + r * D};
        },
        mg.da2.data(), dshift2);
    // Attention branch: x_mid = x_in + gate1 * drop(att W_out^T).
    layers::gated_residual_backward<T>(dx.data() + r0 * D, a.attn_proj.data() + r0 * D,
                                       m.gate1.data(), keep_attn ? keep_attn + r0 * D : nullptr,
                                       keep_scale, n, D, s.dy.data() + r0 * D, dgate1);
    tick(4);
    layers::linear_backward<T>(s.dy.data() + r0 * D, a.att.data() + r0 * D, n, D, D,
                               w.at(o.attn_out), g + o.attn_out, nullptr, s.dh.data() + r0 * D);
    tick(2);
  }
  std::fill(s.dqkv.begin(), s.dqkv.end(), T(0));
  attention_backward(s.dh, s.dqkv);
  tick(3);
  layers::rotary_backward<T>(s.dqkv.data(), N, D, H, Dh, pos, cos, sin);
  tick(4);
  layers::linear_backward<T>(s.dqkv.data(), a.h1.data(), N, D, 3 * D, w.at(o.attn_qkv),
                             g + o.attn_qkv, nullptr, s.dh.data());
  tick(2);
  layers::norm_modulate_backward<T>(
      N, D, m.a1.data(),
      [&](int64_t r) {
        return layers::NormRow<T>{a.x_in.data() + r * D, a.ln1_mean[r], a.ln1_rstd[r],
                                  s.dh.data() + r * D, dx.data() + r * D};
      },
      mg.da1.data(), dshift1);
  // Norm weights and scales: a1 = norm1 (1 + scale1), a2 = norm2 (1 + scale2).
  layers::norm_scale_backward<T>(mg.da1.data(), D, w.at(o.norm1), m.scale1.data(), g + o.norm1,
                                 dscale1);
  layers::norm_scale_backward<T>(mg.da2.data(), D, w.at(o.norm2), m.scale2.data(), g + o.norm2,
                                 dscale2);
}

}  // namespace bd3
