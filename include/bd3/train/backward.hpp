#pragma once
// Backward pass of BlockDiffusionModel's training forward (model.hpp, forward_train), by
// hand, llm.c style: each layer's backward sits beside its forward in include/bd3/layers/
// (shapes in their comments), and the one DiT block's backward (layers/dit_block.hpp)
// runs for each layer, last to first. N = batch * R rows, R = act.rows_per_sequence: 2L
// for [xt, x0], L for the xt rows alone (B' = L); Nxt = batch * L rows of the xt half,
// D hidden, F = 4D, H heads of Dh, C cond_dim. Nothing else depends on the layout: xt row
// r is activation row (r / L) R + r % L, the x0 rows (if any) are rows L..R-1 of each
// sequence, and only the rows that exist reach the embedding.
//
// Gradients are accumulated (+=) into a flat buffer with the parameters' layout
// (ParameterLayout). Reductions over rows (the modulation vectors, norm weights)
// accumulate per thread in double.
//
// Conditioning (time conditioning off, sigma = 0): every modulation vector is a constant
// of the weights (layers/conditioning.hpp); their gradients are sums over rows, chained
// back to the conditioning vector c and then to sigma_map.mlp.{0,2}.
#include <bd3/diffusion/nelbo.hpp>
#include <bd3/error.hpp>
#include <bd3/layers/conditioning.hpp>
#include <bd3/layers/dit_block.hpp>
#include <bd3/layers/embedding.hpp>
#include <bd3/layers/output.hpp>
#include <bd3/layers/rotary.hpp>
#include <bd3/model/model.hpp>
#include <bd3/policies/attention_backend.hpp>
#include <bd3/train/data_parallel.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace bd3::train {

// Scratch buffers of backward(), reusable across calls (they keep their capacity).
template <class T>
struct BackwardScratch {
  std::vector<T> dx;  // [N, D] gradient of the residual stream
  BlockBackwardScratch<T> block;
  layers::OutputBackwardScratch<T> output;
  std::vector<int32_t> row_tokens;
  // Wall seconds spent per phase, accumulated over calls (profiling; reset at will):
  // 0 output layer, 1 MLP GEMMs + GELU, 2 attention projections (qkv, out),
  // 3 attention core, 4 norms, gates, rotary, 5 embedding + conditioning.
  std::array<double, 6> seconds{};
};

// Accumulates (+=) into grads (size layout.total(), the parameters' layout) the gradient
// given dlogits [batch*L, V] (d loss / d act.logits) for the activations of
// model.forward_train(xt, x0, batch, act, /*keep_for_backward=*/true[, dropout]), of
// either layout.
// `ready`, when given, hears of each range of grads as soon as this backward is done with
// it (data_parallel.hpp: a data-parallel run reduces that range while the rest runs).
template <class Model>
void backward(const Model& model, std::span<const int32_t> xt, std::span<const int32_t> x0,
              const TrainActivations<typename Model::scalar_type>& act,
              std::span<const typename Model::scalar_type> dlogits,
              std::span<typename Model::scalar_type> grads,
              BackwardScratch<typename Model::scalar_type>* scratch = nullptr,
              const GradientReady& ready = {}) {
  using T = typename Model::scalar_type;
  using Attention = typename Model::attention_type;
  static_assert(TrainableAttention<Attention, T>,
                "backward: this attention backend has no backward(grad_args, TrainingMask) "
                "(policies/attention_backend.hpp): train with a backend that has one");
  const auto& cfg = model.config();
  const auto& lay = model.layout();
  const auto& cond = model.conditioning();
  const int L = cfg.model_length, D = cfg.hidden_dim, H = cfg.n_heads, F = 4 * D;
  const int V = cfg.vocab_size, n_layers = cfg.n_blocks;
  const int batch = act.batch, rows_seq = act.rows_per_sequence;
  const int64_t N = int64_t(batch) * rows_seq, Nxt = int64_t(batch) * L;
  const bool layout = rows_seq == 2 * L || (rows_seq == L && model.block_size() == L);
  if (batch < 1 || !layout || int(act.arena.layers.size()) != n_layers ||
      act.arena.layers[0].x_in.size() != size_t(N) * D)
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
  auto done = [&](int64_t first, int64_t end) {
    if (ready) ready(GradientRange{first, end - first});
  };
  const bool adaln = cfg.adaln;
  std::vector<double> dcond(adaln ? cfg.cond_dim : 0, 0.0);
  auto clock_mark = std::chrono::steady_clock::now();
  auto tick = [&](int phase) {  // charges the time since the last tick to `phase`
    const auto now = std::chrono::steady_clock::now();
    s.seconds[size_t(phase)] += std::chrono::duration<double>(now - clock_mark).count();
    clock_mark = now;
  };

  s.dx.assign(size_t(N) * D, T(0));
  s.block.dy.resize(size_t(N) * D);
  s.block.dh.resize(size_t(N) * D);
  s.block.dff.resize(size_t(N) * F);
  s.block.dqkv.resize(size_t(N) * 3 * D);

  // ---- Output layer, xt rows only (row r of the xt half is row (r / L) R + r % L).
  {
    const RowMap row{L, rows_seq};
    std::vector<double> dmod;
    layers::output_backward<T>(
        dlogits, act.output, Nxt, D, V, W(lay.out_w), W(lay.norm_final), cond.final_a.data(),
        cond.final_scale.data(), [&](int64_t r) { return act.x_out.data() + row(r) * D; },
        [&](int64_t r) { return s.dx.data() + row(r) * D; }, g + lay.out_w, g + lay.out_b,
        g + lay.norm_final, dmod, s.output);
    if (adaln)
      layers::modulation_backward<T>(dmod.data(), 2 * D, W(lay.out_ada_w), cond.cond,
                                     g + lay.out_ada_w, g + lay.out_ada_b, dcond);
    tick(0);
    done(lay.norm_final, lay.total());
  }

  // ---- The DiT blocks, last to first; s.dx is the gradient at the block's output on
  // entry and at its input on exit.
  std::vector<T> cos, sin;
  layers::rotary_table<T>(cfg.head_dim(), 0, L, cos, sin);
  const TrainingMask mask{L, model.block_size()};
  const T keep_scale = T(1.0 / (1.0 - act.dropout.p));
  BlockModulationGrads mg;
  for (int l = n_layers - 1; l >= 0; --l) {
    const auto& a = act.arena.layers[l];
    mg.reset(D);
    // Rows whose residual gradient can be nonzero at the block's output: all, except at
    // the last block, where only the xt rows reach the loss (the x0 rows' MLP and
    // attention output feed nothing; their keys and values still get gradients).
    std::vector<std::pair<int64_t, int64_t>> slabs;  // (first row, rows)
    if (l == n_layers - 1) {
      for (int b = 0; b < batch; ++b) slabs.push_back({int64_t(b) * rows_seq, L});
      // dO of the x0 rows (none in the xt-only layout) is zero: no gradient reaches them
      // through attention.
      for (int b = 0; b < batch; ++b)
        std::fill(s.block.dh.begin() + (int64_t(b) * rows_seq + L) * D,
                  s.block.dh.begin() + (int64_t(b) + 1) * rows_seq * D, T(0));
    } else {
      slabs.push_back({0, N});
    }
    auto attention_backward = [&](const std::vector<T>& dh, std::vector<T>& dqkv) {
      for (int b = 0; b < batch; ++b) {
        const int64_t r0 = int64_t(b) * rows_seq;
        AttentionGradArgs<T> args;
        args.q = a.qkv.data() + r0 * 3 * D, args.k = args.q + D, args.v = args.q + 2 * D;
        args.ldq = args.ldk = args.ldv = 3 * D;
        args.out = a.att.data() + r0 * D, args.ldo = D;
        args.dout = dh.data() + r0 * D, args.lddo = D;
        args.lse = a.lse.data() + size_t(b) * H * rows_seq;
        args.dq = dqkv.data() + r0 * 3 * D, args.dk = args.dq + D, args.dv = args.dq + 2 * D;
        args.lddq = args.lddk = args.lddv = 3 * D;
        args.nq = args.nk = rows_seq, args.n_heads = H, args.head_dim = D / H;
        Attention::backward(args, mask);
      }
    };
    dit_block_backward<T>(
        model.block_weights(l), D, H, a, keep_scale, slabs, N,
        [L](int64_t i) { return int(i % L); }, cos, sin, attention_backward, g, s.dx, s.block, mg,
        tick);
    if (adaln)
      layers::modulation_backward<T>(mg.dmod.data(), 6 * D, W(lay.layers[l].ada_w), cond.cond,
                                     g + lay.layers[l].ada_w, g + lay.layers[l].ada_b, dcond);
    tick(4);
    done(lay.layers[l].norm1, l + 1 < n_layers ? lay.layers[l + 1].norm1 : lay.norm_final);
  }

  // ---- Embedding of the rows that ran: [xt, x0] or xt alone.
  s.row_tokens.resize(size_t(N));
  for (int b = 0; b < batch; ++b)
    for (int i = 0; i < rows_seq; ++i)
      s.row_tokens[size_t(b) * rows_seq + i] =
          i < L ? xt[size_t(b) * L + i] : x0[size_t(b) * L + i - L];
  layers::embedding_backward<T>(s.row_tokens, s.dx.data(), D, g + lay.embedding);

  // ---- Conditioning MLP.
  if (adaln)
    layers::conditioning_backward<T>(dcond, cond.sigma_hidden, cond.sigma_out, W(lay.sigma2_w),
                                     g + lay.sigma0_w, g + lay.sigma0_b, g + lay.sigma2_w,
                                     g + lay.sigma2_b);
  tick(5);
  done(0, lay.layers.empty() ? lay.norm_final : lay.layers[0].norm1);
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
// Accumulates (+=) its gradient into grads and returns the mean loss; `ready` as in
// backward().
template <class Model>
double loss_and_gradient(const Model& model, std::span<const int32_t> xt,
                         std::span<const int32_t> x0, int batch, std::span<const double> weight,
                         std::span<typename Model::scalar_type> grads, Dropout dropout = {},
                         TrainScratch<typename Model::scalar_type>* scratch = nullptr,
                         const GradientReady& ready = {}) {
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
  backward(model, xt, x0, s.act, std::span<const T>(s.dlogits), grads, &s.backward, ready);
  return terms.loss_sum / double(terms.tokens);
}

}  // namespace bd3::train
