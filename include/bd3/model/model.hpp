#pragma once
// BlockDiffusionModel: the DiT backbone of BD3-LMs (SPEC "Network"). It owns the
// parameters (one flat buffer described by ParameterLayout) and what they determine (the
// adaLN conditioning, the packed decode weights), and runs the one DiT block
// (layers/dit_block.hpp) in each of its passes:
//  (a) forward_train: the vectorized training forward over [xt, x0] under the
//      block-diffusion mask (its backward: train/backward.hpp); at B' = L (MDLM) over the
//      xt rows alone, as the xt rows then see no x0 row (TrainLayout);
//  (b) forward_block / forward_block_fused / commit_block: the KV-cached decode of one
//      block, and the commit of a clean block to the cache;
//  (c) forward_banded: a full forward under the banded block-causal mask (what the cache
//      computes, recomputed from scratch).
// The passes differ only in their Pass (dit_block.hpp): which linear kernel reads the
// weights, where keys and values come from, which position a row has.
#include <bd3/detail/huge_pages.hpp>
#include <bd3/error.hpp>
#include <bd3/layers/attention.hpp>
#include <bd3/layers/conditioning.hpp>
#include <bd3/layers/dit_block.hpp>
#include <bd3/layers/embedding.hpp>
#include <bd3/layers/gelu.hpp>
#include <bd3/layers/linear.hpp>
#include <bd3/layers/output.hpp>
#include <bd3/layers/residual.hpp>
#include <bd3/layers/rotary.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/decode_weights.hpp>
#include <bd3/model/kv_cache.hpp>
#include <bd3/model/parameters.hpp>
#include <bd3/policies/attention.hpp>
#include <bd3/policies/block_size.hpp>

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace bd3 {

// The rows forward_train runs per sequence.
//  automatic: the xt rows alone (L) when the block size equals model_length, else
//             [xt, x0] (2L). With one block the training mask lets an xt row see the xt
//             rows only (there is no earlier x0 block), so the x0 half would be computed
//             for nothing: about half of the work. Same logits, loss and gradients (the
//             tests compare them, with and without dropout).
//  xt_x0:     [xt, x0] whatever the block size: the SPEC's layout, kept for tests and
//             benchmarks to compare with.
enum class TrainLayout { automatic, xt_x0 };

// Everything the training forward produces: logits of the xt half and, when asked, the
// activations for the backward.
template <class T>
struct TrainActivations {
  int batch = 0;
  int rows_per_sequence = 0;            // 2L ([xt, x0]) or L (xt only); xt rows first
  ActivationArena<T> arena;             // the blocks' activations: one per layer, or
                                        // one reused (inference)
  std::vector<T> x_out;                 // [N, D] residual stream after the last layer
  layers::OutputActivations<T> output;  // final norm of the xt rows [batch*L]
  std::vector<T> logits;                // [batch*L, V]
  Dropout dropout;                      // the dropout of this forward (p = 0: none);
                                        // kept branch outputs are scaled by 1/(1-p)
};

template <BlockSizePolicy Block = BlockSize<dynamic>, class Attention = BlockSparseAttention,
          class Scalar = float>
class BlockDiffusionModel {
  static_assert(std::is_floating_point_v<Scalar>,
                "BlockDiffusionModel: Scalar must be float or double");
  static_assert(AttentionBackend<Attention, Scalar>,
                "BlockDiffusionModel: the attention backend must provide `name` and a static "
                "forward(args, mask) for this Scalar type and every mask the model uses "
                "(policies/attention_backend.hpp); SimdAttention computes in float only");

 public:
  using scalar_type = Scalar;
  using block_policy = Block;
  using attention_type = Attention;

  // A model with all-zero weights of the given shape (load or initialise them next). The
  // block size is the type's: config.block_size may be left 0 for BlockSize<N> (it becomes
  // N; another value is refused) and is required for BlockSize<dynamic>.
  explicit BlockDiffusionModel(const ModelConfig& config)
      : config_(config), block_(block_policy_for(config)) {
    config_.block_size = block_.get();
    config_.validate();
    layout_ = ParameterLayout(config_);
    params_.assign(size_t(layout_.total()), Scalar(0));
    parameters_changed();
  }

  const ModelConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  int block_size() const { return block_.get(); }
  std::span<Scalar> parameters() { return params_; }
  std::span<const Scalar> parameters() const { return params_; }
  Scalar* param(int64_t offset) { return params_.data() + offset; }
  const Scalar* param(int64_t offset) const { return params_.data() + offset; }

  // Recomputes what depends only on the weights (the conditioning and modulation vectors,
  // the packed decode weights). Call after changing parameters().
  void parameters_changed() {
    conditioning_.forward(config_, layout_, params_.data());
    decode_store_.pack(decode_store_.storage(), config_, layout_, params_.data());
  }

  // The weight storage of decode calls (forward_block, forward_block_fused, commit_block).
  // f32_packed and bf16 keep a packed copy of the linear layers' matrices beside the
  // parameters and make decode calls read it; the training and full forwards keep reading
  // the parameters.
  void set_decode_weights(DecodeWeights storage) {
    decode_store_.pack(storage, config_, layout_, params_.data());
  }
  DecodeWeights decode_weights() const { return decode_store_.storage(); }

  // Which rows forward_train runs (TrainLayout; automatic by default). Results are the
  // same up to rounding.
  void set_train_layout(TrainLayout layout) { train_layout_ = layout; }
  TrainLayout train_layout() const { return train_layout_; }
  // Rows per sequence of forward_train under the current layout: L or 2L.
  int train_rows_per_sequence() const {
    const int L = config_.model_length;
    return train_layout_ == TrainLayout::automatic && block_size() == L ? L : 2 * L;
  }

  // The adaLN conditioning the weights determine (layers/conditioning.hpp).
  const Conditioning<Scalar>& conditioning() const { return conditioning_; }

  // (a) Training forward. xt, x0: [batch, L]. Produces act.logits [batch*L, V] (raw
  // logits of the xt half). keep_for_backward stores every layer's activations, rows
  // [xt, x0] or xt alone per sequence (act.rows_per_sequence, train_rows_per_sequence()).
  // dropout (training only, default off) drops branch outputs before the gates; its keep
  // masks are stored in act.arena.layers[l].keep_{attn,mlp} (with keep_for_backward).
  // Either layout draws, for xt position i of sequence b, the bits of row b 2L + i.
  void forward_train(std::span<const int32_t> xt, std::span<const int32_t> x0, int batch,
                     TrainActivations<Scalar>& act, bool keep_for_backward = false,
                     Dropout dropout = {}) const {
    if (!(dropout.p >= 0.0 && dropout.p < 1.0))
      fail_usage("forward_train: dropout must be in [0, 1)");
    const int L = config_.model_length, D = config_.hidden_dim;
    if (batch < 1) fail_usage("forward_train: batch must be >= 1");
    if (xt.size() != size_t(batch) * L || x0.size() != size_t(batch) * L)
      fail("forward_train: xt and x0 must each hold batch x model_length = " +
           std::to_string(int64_t(batch) * L) + " tokens");
    check_tokens(xt);
    check_tokens(x0);
    const int rows_seq = train_rows_per_sequence();
    const int64_t N = int64_t(batch) * rows_seq;
    act.batch = batch;
    act.rows_per_sequence = rows_seq;
    dropout.hash_row = RowMap{rows_seq, 2 * L};
    act.dropout = dropout;
    // Rows per sequence: [xt, x0] or xt alone; both halves use positions 0..L-1. The mask
    // is the same: on the xt rows alone (B' = L) it allows every pair, one key range.
    std::vector<Scalar> x(size_t(N) * D);
    layers::embedding_forward<Scalar>(
        param(layout_.embedding), D, N,
        [&](int64_t r) {
          const int64_t b = r / rows_seq, i = r % rows_seq;
          return i < L ? xt[size_t(b * L + i)] : x0[size_t(b * L + i - L)];
        },
        x.data());
    SequencePass<TrainingMask> pass(*this, batch, rows_seq, L, TrainingMask{L, block_size()});
    act.arena.reset(block_activation_layout<Scalar>(pass, N, D),
                    keep_for_backward ? config_.n_blocks : 1);
    for (int l = 0; l < config_.n_blocks; ++l)
      dit_block_forward<Scalar>(block_weights(l), D, config_.n_heads, x, N,
                                act.arena.layers[keep_for_backward ? l : 0], pass, dropout, l);
    act.x_out = x;
    // Output layer on the xt rows only (all of them in the xt-only layout).
    const int64_t Nxt = int64_t(batch) * L;
    if (rows_seq == L) {
      output(x.data(), Nxt, act.output, act.logits, false);
      return;
    }
    std::vector<Scalar> xt_rows(size_t(Nxt) * D);
    for (int b = 0; b < batch; ++b)
      std::copy(x.begin() + int64_t(b) * rows_seq * D, x.begin() + (int64_t(b) * rows_seq + L) * D,
                xt_rows.begin() + int64_t(b) * L * D);
    output(xt_rows.data(), Nxt, act.output, act.logits, false);
  }

  // (b) Sampling forward: tokens [batch, B'] of the current block, attending to the cached
  // window and to itself. Writes logits [batch*B', V]. The cache is not changed (its
  // scratch rows are).
  void forward_block(std::span<const int32_t> tokens, KVCache<Scalar>& cache,
                     std::vector<Scalar>& logits) const {
    std::vector<Scalar> x = decode_layers({}, tokens, cache);
    layers::OutputActivations<Scalar> out;
    output(x.data(), int64_t(cache.batch()) * block_size(), out, logits, true);
  }

  // Fused commit: commits the clean block `commit` [batch, B'] and runs the sampling
  // forward of the next block `tokens` [batch, B'] in one call (2B' rows instead of two
  // calls of B'). Same numbers as commit_block(commit) then forward_block(tokens).
  void forward_block_fused(std::span<const int32_t> commit, std::span<const int32_t> tokens,
                           KVCache<Scalar>& cache, std::vector<Scalar>& logits) const {
    if (commit.empty() || tokens.empty()) fail("forward_block_fused: both blocks are required");
    std::vector<Scalar> x = decode_layers(commit, tokens, cache);
    const int Bp = block_size(), D = config_.hidden_dim, batch = cache.batch();
    std::vector<Scalar> current(size_t(batch) * Bp * D);
    for (int b = 0; b < batch; ++b)
      std::copy(x.begin() + (int64_t(b) * 2 * Bp + Bp) * D,
                x.begin() + (int64_t(b) * 2 * Bp + 2 * Bp) * D,
                current.begin() + int64_t(b) * Bp * D);
    cache.commit_scratch();
    layers::OutputActivations<Scalar> out;
    output(current.data(), int64_t(batch) * Bp, out, logits, true);
  }

  // Commits a clean block [batch, B'] to the cache (one forward without the output
  // layer): its keys and values at every layer join the window.
  void commit_block(std::span<const int32_t> tokens, KVCache<Scalar>& cache) const {
    decode_layers(tokens, {}, cache);
    cache.commit_scratch();
  }

  // (c) Full forward of one sequence of n tokens (n a multiple of B') under the banded
  // block-causal mask with window model_length, positions 0..n-1. Logits [n, V].
  void forward_banded(std::span<const int32_t> tokens, std::vector<Scalar>& logits) const {
    const int n = static_cast<int>(tokens.size());
    if (n == 0 || n % block_size() != 0)
      fail("forward_banded: the sequence length must be a positive multiple of the block size");
    check_tokens(tokens);
    const int D = config_.hidden_dim;
    std::vector<Scalar> x(size_t(n) * D);
    layers::embedding_forward<Scalar>(
        param(layout_.embedding), D, n, [&](int64_t r) { return tokens[size_t(r)]; }, x.data());
    SequencePass<BandedBlockCausalMask> pass(
        *this, 1, n, n, BandedBlockCausalMask{block_size(), config_.model_length});
    ActivationArena<Scalar> arena;
    arena.reset(block_activation_layout<Scalar>(pass, n, D), 1);
    for (int l = 0; l < config_.n_blocks; ++l)
      dit_block_forward<Scalar>(block_weights(l), D, config_.n_heads, x, n, arena.layers[0], pass,
                                Dropout{}, l);
    layers::OutputActivations<Scalar> out;
    output(x.data(), n, out, logits, false);
  }

  void check_tokens(std::span<const int32_t> tokens) const {
    for (int32_t t : tokens)
      if (t < 0 || t >= config_.vocab_size)
        fail("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
             std::to_string(config_.vocab_size) + ")");
  }

  // Layer l's weights as the block reads them.
  BlockWeights<Scalar> block_weights(int l) const {
    return {params_.data(), layout_.layers[size_t(l)], conditioning_.layers[size_t(l)]};
  }

 private:
  // The pass of many-row forwards over whole sequences (training over [xt, x0] or xt
  // alone, the banded reference): linear layers as GEMMs on the parameters, attention
  // over the rows of each sequence under `mask`, row r at rotary position r % period.
  template <class Mask>
  struct SequencePass {
    static constexpr bool keep_input = true, keep_pre = true;
    const BlockDiffusionModel& model;
    int batch, rows_seq, period;
    Mask mask;
    std::vector<Scalar> cos_, sin_;

    SequencePass(const BlockDiffusionModel& m, int batch_, int rows_seq_, int period_, Mask mask_)
        : model(m), batch(batch_), rows_seq(rows_seq_), period(period_), mask(mask_) {
      layers::rotary_table<Scalar>(m.config_.head_dim(), 0, period, cos_, sin_);
    }
    void linear(const Scalar* x, int64_t N, int64_t in, int64_t w, const Scalar* b, int64_t out,
                Scalar* y) const {
      layers::linear_forward<Scalar>(x, N, in, model.param(w), b, out, y);
    }
    void linear_gelu(const Scalar* x, int64_t N, int64_t in, int64_t w, const Scalar* b,
                     int64_t out, std::span<Scalar> pre, std::span<Scalar> act) const {
      linear(x, N, in, w, b, out, pre.data());
      layers::gelu_forward<Scalar>(pre.data(), N, out, act.data());
    }
    int position(int64_t r) const { return int(r % period); }
    const std::vector<Scalar>& cos() const { return cos_; }
    const std::vector<Scalar>& sin() const { return sin_; }
    int64_t lse_size() const { return int64_t(batch) * model.config_.n_heads * rows_seq; }
    void attention(std::span<const Scalar> qkv, std::span<Scalar> att,
                   std::span<Scalar> lse) const {
      const int D = model.config_.hidden_dim, H = model.config_.n_heads;
      for (int b = 0; b < batch; ++b) {
        const Scalar* base = qkv.data() + int64_t(b) * rows_seq * 3 * D;
        AttentionArgs<Scalar> args;
        args.q = base, args.k = base + D, args.v = base + 2 * D;
        args.ldq = args.ldk = args.ldv = 3 * D;
        args.out = att.data() + int64_t(b) * rows_seq * D, args.ldo = D;
        args.lse = lse.data() + size_t(b) * H * rows_seq;
        args.nq = args.nk = rows_seq, args.n_heads = H, args.head_dim = D / H;
        Attention::forward(args, mask);
      }
    }
  };

  // The pass of decode calls: linear layers on the decode weights (row kernels or the
  // packed copy, GELU in the epilogue), keys and values written to the cache's scratch
  // rows and the attention run against the cache.
  struct DecodePass {
    static constexpr bool keep_input = false, keep_pre = false;
    const BlockDiffusionModel& model;
    KVCache<Scalar>& cache;
    int rows;    // per sequence
    int cached;  // committed rows in the cache
    DecodeMask mask;
    std::vector<Scalar> cos_, sin_;
    int layer = 0;

    void linear(const Scalar* x, int64_t N, int64_t in, int64_t w, const Scalar* b, int64_t out,
                Scalar* y) const {
      model.decode_store_.linear(model.params_.data(), x, N, in, w, b, out, y);
    }
    void linear_gelu(const Scalar* x, int64_t N, int64_t in, int64_t w, const Scalar* b,
                     int64_t out, std::span<Scalar>, std::span<Scalar> act) const {
      model.decode_store_.linear(model.params_.data(), x, N, in, w, b, out, act.data(), true);
    }
    int position(int64_t r) const { return int(r % rows); }
    const std::vector<Scalar>& cos() const { return cos_; }
    const std::vector<Scalar>& sin() const { return sin_; }
    int64_t lse_size() const { return 0; }
    void attention(std::span<const Scalar> qkv, std::span<Scalar> att, std::span<Scalar>) const {
      const int D = model.config_.hidden_dim, H = model.config_.n_heads, Dh = D / H;
      const int R = rows;
      auto attend = [&](int b) {
        Scalar* K = cache.keys(layer, b);
        Scalar* Vv = cache.values(layer, b);
        const int64_t hs = cache.head_stride();
        for (int r = 0; r < R; ++r) {
          const Scalar* row = qkv.data() + (int64_t(b) * R + r) * 3 * D;
          for (int hd = 0; hd < H; ++hd) {
            const Scalar* k = row + D + hd * Dh;
            const Scalar* v = row + 2 * D + hd * Dh;
            std::copy(k, k + Dh, K + hd * hs + int64_t(cached + r) * Dh);
            std::copy(v, v + Dh, Vv + hd * hs + int64_t(cached + r) * Dh);
          }
        }
        AttentionArgs<Scalar> args;
        args.q = qkv.data() + int64_t(b) * R * 3 * D, args.ldq = 3 * D;
        args.k = K, args.v = Vv, args.ldk = args.ldv = Dh;
        args.head_stride_k = args.head_stride_v = hs;
        args.out = att.data() + int64_t(b) * R * D, args.ldo = D;
        args.nq = R, args.nk = cached + R, args.n_heads = H, args.head_dim = Dh;
        Attention::forward(args, mask);
      };
      // A batch that can occupy the threads runs one sequence per thread (its attention
      // then runs on that thread): one parallel region per layer instead of one per
      // sequence. Otherwise each sequence's attention spreads over the threads. (Not an
      // `if` clause: an inactive outer region would make every inner one a nested team,
      // which libgomp builds afresh each time.)
      const int batch = cache.batch();
      if (batch > 1 && batch >= omp_get_max_threads()) {
#pragma omp parallel for schedule(static)
        for (int b = 0; b < batch; ++b) attend(b);
      } else {
        for (int b = 0; b < batch; ++b) attend(b);
      }
    }
  };

  // Final norm and output linear layer of R rows (decode: the decode weights).
  void output(const Scalar* x, int64_t R, layers::OutputActivations<Scalar>& out,
              std::vector<Scalar>& logits, bool decode) const {
    const int D = config_.hidden_dim, V = config_.vocab_size;
    layers::output_forward<Scalar>(
        x, R, D, conditioning_.final_a.data(), conditioning_.final_shift.data(), V, out, logits,
        [&](const Scalar* hf, int64_t n, int64_t in, Scalar* y) {
          if (decode)
            decode_store_.linear(params_.data(), hf, n, in, layout_.out_w, param(layout_.out_b), V,
                                 y);
          else
            layers::linear_forward<Scalar>(hf, n, in, param(layout_.out_w), param(layout_.out_b), V,
                                           y);
        });
  }

  // The layers of a decode call. Rows per sequence: the optional clean block to commit
  // (it attends to the cached window and itself), then the current block (it attends to
  // the window as it will be after that commit, and to itself). Each row's keys and
  // values go to the cache's scratch rows. Returns the residual stream [batch*rows, D].
  std::vector<Scalar> decode_layers(std::span<const int32_t> commit,
                                    std::span<const int32_t> tokens, KVCache<Scalar>& cache) const {
    const int Bp = block_size(), batch = cache.batch();
    const int D = config_.hidden_dim;
    if (cache.block_size() != Bp || cache.window() != config_.model_length)
      fail("KV cache was made for another model shape");
    for (auto span : {commit, tokens})
      if (!span.empty() && span.size() != size_t(batch) * Bp)
        fail("decode: expected batch x block_size = " + std::to_string(batch * Bp) +
             " tokens, got " + std::to_string(span.size()));
    check_tokens(commit);
    check_tokens(tokens);
    const int groups = int(!commit.empty()) + int(!tokens.empty());
    if (groups == 0)
      fail("decode: expected batch x block_size = " + std::to_string(batch * Bp) +
           " tokens, got 0");
    const int R = groups * Bp;  // rows per sequence
    const int64_t N = int64_t(batch) * R;
    std::vector<Scalar> x(N * D);
    layers::embedding_forward<Scalar>(
        param(layout_.embedding), D, N,
        [&](int64_t row) {
          const int64_t b = row / R, r = row % R;
          const bool is_commit = !commit.empty() && r < Bp;
          return is_commit ? commit[size_t(b * Bp + r)] : tokens[size_t(b * Bp + r % Bp)];
        },
        x.data());
    const int cached = cache.length();
    // Keys of each group: a commit block sees [0, cached + Bp); the current block sees the
    // window after the commit (the oldest block drops out once it is full).
    DecodeMask mask{Bp, groups, {}};
    if (groups == 2) {
      const int drop = std::max(0, cached + Bp - (config_.model_length - Bp));
      mask.ranges[0] = {0, cached + Bp};
      mask.ranges[1] = {drop, cached + 2 * Bp};
    } else {
      mask.ranges[0] = {0, cached + Bp};
    }
    DecodePass pass{*this, cache, R, cached, mask, {}, {}};
    layers::rotary_table<Scalar>(config_.head_dim(), cache.next_position(), R, pass.cos_,
                                 pass.sin_);
    // Decode calls are small and many: each thread keeps its arena (and its capacity)
    // across calls instead of allocating and zeroing one per call.
    thread_local ActivationArena<Scalar> arena;
    arena.reset(block_activation_layout<Scalar>(pass, N, D), 1);
    for (int l = 0; l < config_.n_blocks; ++l) {
      pass.layer = l;
      dit_block_forward<Scalar>(block_weights(l), D, config_.n_heads, x, N, arena.layers[0], pass,
                                Dropout{}, l);
    }
    return x;
  }

  static Block block_policy_for(const ModelConfig& c) {
    if constexpr (Block::is_dynamic) {
      if (c.block_size == 0)
        fail_usage(
            "config.block_size is not set (a BlockSize<dynamic> model takes it from its "
            "config)");
      return Block(c.block_size);
    } else {
      return c.block_size == 0 ? Block() : Block(c.block_size);
    }
  }

  ModelConfig config_;
  Block block_;
  TrainLayout train_layout_ = TrainLayout::automatic;
  ParameterLayout layout_;
  // Decode streams all of it every call: huge pages where the system grants them.
  std::vector<Scalar, detail::HugePageAllocator<Scalar>> params_;
  Conditioning<Scalar> conditioning_;
  DecodeWeightStore<Scalar> decode_store_;
};

}  // namespace bd3
