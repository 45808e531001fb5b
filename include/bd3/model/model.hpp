#pragma once
// BlockDiffusionModel: the DiT backbone of BD3-LMs (SPEC "Network"), with
//  (a) the vectorized training forward over [xt, x0] under the block-diffusion mask,
//  (b) the sampling forward of one block against a KVCache,
//  (c) committing a clean block to the cache,
//  (d) a full forward under the banded block-causal mask (what the cache computes).
// Parameters live in one flat buffer described by ParameterLayout.
#include <bd3/detail/huge_pages.hpp>
#include <bd3/kernels/gemm.hpp>
#include <bd3/kernels/kernels.hpp>
#include <bd3/kernels/sgemm.hpp>
#include <bd3/layers/attention.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/kv_cache.hpp>
#include <bd3/model/parameters.hpp>
#include <bd3/policies/attention.hpp>
#include <bd3/policies/block_size.hpp>
#include <bd3/policies/noise.hpp>

#include <omp.h>
#include <Eigen/Dense>

#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

namespace bd3 {

// Dropout of the two branch outputs (attn_proj, mlp_out) before their gates, training
// only. Off by default (p = 0): pass {config.dropout, step_seed} to train with it.
// The keep mask of element (row, column) of branch `branch` (0 attention, 1 MLP) of layer
// `layer` is a counter-based hash of (seed, layer, branch, row, column): deterministic
// for a seed whatever the number of threads.
struct Dropout {
  double p = 0.0;  // drop probability in [0, 1)
  uint64_t seed = 0;
  bool active() const { return p > 0.0; }
};

namespace detail {
inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// keep[r * D + c] = 1 with probability 1 - p for rows [0, N) of one branch.
inline void dropout_keep_mask(const Dropout& d, int layer, int branch, int64_t N, int D,
                              uint8_t* keep) {
  const uint64_t stream =
      splitmix64(d.seed ^ splitmix64(uint64_t(layer) * 2 + uint64_t(branch) + 1));
  const uint64_t threshold = uint64_t(d.p * 4294967296.0);  // keep iff 32-bit uniform >= p 2^32
#pragma omp parallel for schedule(static) if (N * D > 32768)
  for (int64_t r = 0; r < N; ++r)
    for (int c = 0; c < D; ++c)
      keep[r * D + c] = uint8_t((splitmix64(stream + uint64_t(r * D + c)) >> 32) >= threshold);
}
}  // namespace detail

// Activations of one transformer layer kept for the backward pass. N = rows.
template <class T>
struct LayerActivations {
  std::vector<T> x_in;                // [N, D] residual stream entering the layer
  std::vector<T> ln1_mean, ln1_rstd;  // [N]
  std::vector<T> h1;                  // [N, D] LN1 output after adaLN modulation
  std::vector<T> qkv;                 // [N, 3D] q and k after rotary, v
  std::vector<T> lse;                 // [batch, H, rows per sequence] attention log-sum-exp
  std::vector<T> att;                 // [N, D] attention output (heads concatenated)
  std::vector<T> attn_proj;           // [N, D] att W_out^T (before the gate)
  std::vector<T> x_mid;               // [N, D] residual after attention
  std::vector<T> ln2_mean, ln2_rstd;  // [N]
  std::vector<T> h2;                  // [N, D] LN2 output after modulation
  std::vector<T> mlp_pre;             // [N, 4D] before GELU
  std::vector<T> mlp_act;             // [N, 4D] after GELU
  std::vector<T> mlp_out;             // [N, D] (before the gate)
  std::vector<uint8_t> keep_attn;     // [N, D] dropout keep masks (1 = kept) of attn_proj
  std::vector<uint8_t> keep_mlp;      //   and mlp_out; empty without dropout
};

// Everything the training forward produces: logits of the xt half and, when asked, the
// activations for backward.
template <class T>
struct TrainActivations {
  int batch = 0;
  int rows_per_sequence = 0;                // 2L
  std::vector<LayerActivations<T>> layers;  // one per layer, or one reused (inference)
  std::vector<T> x_out;                     // [N, D] residual stream after the last layer
  std::vector<T> lnf_mean, lnf_rstd;        // [batch*L] final norm of the xt rows
  std::vector<T> hf;                        // [batch*L, D] final modulated norm
  std::vector<T> logits;                    // [batch*L, V]
  Dropout dropout;                          // the dropout of this forward (p = 0: none);
                                            // kept branch outputs are scaled by 1/(1-p)
};

// How KV-cached decode calls store the weight matrices of the linear layers they stream
// (qkv, attention output, MLP in and out, output layer):
//  - f32: the parameters themselves, row by row (the default; no copy);
//  - f32_packed: a float32 copy in the packed tiles of kernels/gemm.hpp (4 more bytes per
//    weight; streams nearer the memory bandwidth: bd3 bench, docs/performance.md);
//  - bf16: a packed bfloat16 copy, half the bytes of f32, each weight rounded to the
//    nearest bfloat16 (2 more bytes per weight).
// The arithmetic stays float32; embeddings, biases and norms stay float32. f32 and
// f32_packed sum in different orders (equal up to rounding); bf16 gives exactly what
// f32_packed gives on the model with those matrices rounded to bfloat16
// (tests/test_decode_bf16.cpp).
enum class DecodeWeights { f32, f32_packed, bf16 };

// The adaLN modulation vectors, constant per model when time conditioning is off.
template <class T>
struct Modulation {
  std::vector<T> shift1, scale1, gate1, shift2, scale2, gate2;  // [D] each
  std::vector<T> a1, a2;                                        // norm weight * (1 + scale)
};

template <BlockSizePolicy Block = BlockSize<dynamic>, NoiseSchedule Noise = noise::LogLinear,
          AttentionBackend Attention = BlockSparseAttention, class Scalar = float>
class BlockDiffusionModel {
  static_assert(std::is_floating_point_v<Scalar>,
                "BlockDiffusionModel: Scalar must be float or double");
  static_assert(
      !Attention::float_only || std::is_same_v<Scalar, float>,
      "SimdAttention computes in float32 only: use ScalarAttention or BlockSparseAttention "
      "for a double-precision model (finite-difference checks)");

 public:
  using scalar_type = Scalar;
  using block_policy = Block;
  using noise_type = Noise;
  using attention_type = Attention;
  using RowMat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using MapM = Eigen::Map<RowMat>;
  using MapCM = Eigen::Map<const RowMat>;
  using MapCV = Eigen::Map<const Vec>;

  // A model with all-zero weights of the given shape (load or initialise them next).
  explicit BlockDiffusionModel(const ModelConfig& config, Noise noise = {})
      : config_(config), block_(config.block_size), noise_(noise) {
    config_.validate();
    layout_ = ParameterLayout(config_);
    params_.assign(size_t(layout_.total()), Scalar(0));
    parameters_changed();
  }

  const ModelConfig& config() const { return config_; }
  ModelConfig& mutable_config() { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  const Noise& noise() const { return noise_; }
  int block_size() const { return block_.get(); }
  std::span<Scalar> parameters() { return params_; }
  std::span<const Scalar> parameters() const { return params_; }
  Scalar* param(int64_t offset) { return params_.data() + offset; }
  const Scalar* param(int64_t offset) const { return params_.data() + offset; }

  // Recomputes what depends only on the weights (conditioning vector, modulations, the
  // packed decode weights). Call after changing parameters().
  void parameters_changed() {
    compute_conditioning();
    pack_decode_weights();
  }

  // The weight storage of decode calls (forward_block, forward_block_fused, commit_block).
  // f32_packed and bf16 keep a packed copy of the linear layers' matrices beside the
  // parameters and make decode calls read it; the training and full forwards keep reading
  // the parameters.
  void set_decode_weights(DecodeWeights storage) {
    if constexpr (!std::is_same_v<Scalar, float>)
      if (storage != DecodeWeights::f32)
        fail_usage("packed and bfloat16 decode weights need a float32 model");
    decode_weights_ = storage;
    pack_decode_weights();
  }
  DecodeWeights decode_weights() const { return decode_weights_; }

  const std::vector<Scalar>& conditioning() const { return cond_; }
  const std::vector<Modulation<Scalar>>& modulations() const { return mods_; }
  const std::vector<Scalar>& final_shift() const { return final_shift_; }
  const std::vector<Scalar>& final_scale() const { return final_scale_; }
  const std::vector<Scalar>& final_a() const { return final_a_; }

  // (a) Training forward. xt, x0: [batch, L]. Produces act.logits [batch*L, V] (raw
  // logits of the xt half). keep_for_backward stores every layer's activations.
  // dropout (training only, default off) drops branch outputs before the gates; its keep
  // masks are stored in act.layers[l].keep_{attn,mlp} (with keep_for_backward).
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
    const int rows_seq = 2 * L;
    const int64_t N = int64_t(batch) * rows_seq;
    act.batch = batch;
    act.rows_per_sequence = rows_seq;
    act.layers.resize(keep_for_backward ? config_.n_blocks : 1);
    act.dropout = dropout;
    // Embedding of [xt, x0] per sequence.
    std::vector<Scalar> x(size_t(N) * D);
    for (int b = 0; b < batch; ++b)
      for (int i = 0; i < rows_seq; ++i) {
        int32_t tok = i < L ? xt[size_t(b) * L + i] : x0[size_t(b) * L + i - L];
        const Scalar* e = param(layout_.embedding) + int64_t(tok) * D;
        std::copy(e, e + D, x.data() + (int64_t(b) * rows_seq + i) * D);
      }
    // Rotary: both halves use positions 0..L-1.
    std::vector<Scalar> cos, sin;
    rotary_table(0, L, cos, sin);
    const TrainingMask mask{L, block_size()};
    for (int l = 0; l < config_.n_blocks; ++l) {
      auto& a = act.layers[keep_for_backward ? l : 0];
      layer_forward(
          l, x, N, batch, rows_seq, [L](int i) { return i % L; }, cos, sin, mask, a, dropout);
    }
    act.x_out = x;
    // Output layer on the xt rows only.
    const int64_t Nxt = int64_t(batch) * L;
    std::vector<Scalar> xt_rows(size_t(Nxt) * D);
    for (int b = 0; b < batch; ++b)
      std::copy(x.begin() + int64_t(b) * rows_seq * D, x.begin() + (int64_t(b) * rows_seq + L) * D,
                xt_rows.begin() + int64_t(b) * L * D);
    output_layer(xt_rows, Nxt, act.lnf_mean, act.lnf_rstd, act.hf, act.logits);
  }

  // (b) Sampling forward: tokens [batch, B'] of the current block, attending to the cached
  // window and to itself. Writes logits [batch*B', V]. The cache is not changed (its
  // scratch rows are).
  void forward_block(std::span<const int32_t> tokens, KVCache<Scalar>& cache,
                     std::vector<Scalar>& logits) const {
    std::vector<Scalar> x = decode_layers({}, tokens, cache);
    const int64_t rows = int64_t(cache.batch()) * block_size();
    std::vector<Scalar> mean, rstd, hf;
    output_layer(x, rows, mean, rstd, hf, logits, true);
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
    std::vector<Scalar> mean, rstd, hf;
    output_layer(current, int64_t(batch) * Bp, mean, rstd, hf, logits, true);
  }

  // (c) Commits a clean block [batch, B'] to the cache (one forward without the output
  // layer): its keys and values at every layer join the window.
  void commit_block(std::span<const int32_t> tokens, KVCache<Scalar>& cache) const {
    decode_layers(tokens, {}, cache);
    cache.commit_scratch();
  }

  // (d) Full forward of one sequence of n tokens (n a multiple of B') under the banded
  // block-causal mask with window model_length, positions 0..n-1. Logits [n, V].
  // This is what KV-cached decoding computes, recomputed from scratch.
  void forward_banded(std::span<const int32_t> tokens, std::vector<Scalar>& logits) const {
    const int n = static_cast<int>(tokens.size());
    if (n == 0 || n % block_size() != 0)
      fail("forward_banded: the sequence length must be a positive multiple of the block size");
    check_tokens(tokens);
    const int D = config_.hidden_dim;
    std::vector<Scalar> x(size_t(n) * D);
    for (int i = 0; i < n; ++i) {
      const Scalar* e = param(layout_.embedding) + int64_t(tokens[i]) * D;
      std::copy(e, e + D, x.data() + int64_t(i) * D);
    }
    std::vector<Scalar> cos, sin;
    rotary_table(0, n, cos, sin);
    const BandedBlockCausalMask mask{block_size(), config_.model_length};
    LayerActivations<Scalar> a;
    for (int l = 0; l < config_.n_blocks; ++l) {
      layer_forward(
          l, x, n, 1, n, [](int i) { return i; }, cos, sin, mask, a);
    }
    std::vector<Scalar> mean, rstd, hf;
    output_layer(x, n, mean, rstd, hf, logits);
  }

  // Rotary cos/sin for positions [pos0, pos0 + n): [n, Dh/2] each, angles in double so
  // that long generations keep their precision.
  void rotary_table(int64_t pos0, int n, std::vector<Scalar>& cos, std::vector<Scalar>& sin) const {
    const int half = config_.head_dim() / 2;
    cos.resize(size_t(n) * half);
    sin.resize(size_t(n) * half);
    for (int j = 0; j < half; ++j) {
      // inv_freq as the reference computes it (float32), the angle in double.
      const float inv = 1.0f / std::pow(10000.0f, float(2 * j) / float(config_.head_dim()));
      for (int i = 0; i < n; ++i) {
        const double angle = double(pos0 + i) * double(inv);
        cos[size_t(i) * half + j] = Scalar(std::cos(angle));
        sin[size_t(i) * half + j] = Scalar(std::sin(angle));
      }
    }
  }

  void check_tokens(std::span<const int32_t> tokens) const {
    for (int32_t t : tokens)
      if (t < 0 || t >= config_.vocab_size)
        fail("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
             std::to_string(config_.vocab_size) + ")");
  }

 private:
  // y[N, out] = x[N, in] W^T (+ b). Decode calls and few rows use the decode kernels
  // (kernels/gemm.hpp: a row's result does not depend on the other rows of the call, so
  // batched sampling draws what unbatched sampling draws); many rows use GEMM.
  static void linear(const Scalar* x, int64_t N, int64_t in, const Scalar* W, const Scalar* b,
                     int64_t out, Scalar* y, bool decode = false) {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (decode || N <= 4 * kernels::small_m_max_rows) {
        kernels::simd::linear_few_rows(x, N, in, W, b, out, y);
        return;
      }
    }
    // One slab of rows per thread, each a single-threaded GEMM: on these shapes that beats
    // Eigen's own OpenMP split (which re-packs W per thread and synchronises per panel).
#pragma omp parallel if (N * in * out > (int64_t(1) << 22))
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t chunk = ((N + nt - 1) / nt + 15) / 16 * 16;
      const int64_t r0 = std::min<int64_t>(N, int64_t(t) * chunk),
                    r1 = std::min<int64_t>(N, r0 + chunk);
      if (r1 > r0) {
        if constexpr (std::is_same_v<Scalar, float> && kernels::simd::has_gemm_nt) {
          // Our blocked GEMM where there is AVX-512 (kernels/sgemm.hpp: 1.0-1.5x Eigen's
          // on these shapes), Eigen's elsewhere.
          kernels::simd::gemm_nt(x + r0 * in, r1 - r0, in, W, b, out, y + r0 * out);
        } else {
          MapM Y(y + r0 * out, r1 - r0, out);
          Y.noalias() = MapCM(x + r0 * in, r1 - r0, in) * MapCM(W, out, in).transpose();
          if (b) Y.rowwise() += MapCV(b, out).transpose();
        }
      }
    }
  }

  void compute_conditioning() {
    const int D = config_.hidden_dim, C = config_.cond_dim;
    mods_.assign(config_.n_blocks, {});
    if (!config_.adaln) {
      for (int l = 0; l < config_.n_blocks; ++l) {
        auto& m = mods_[l];
        m.shift1.assign(D, 0), m.scale1.assign(D, 0), m.gate1.assign(D, 1);
        m.shift2.assign(D, 0), m.scale2.assign(D, 0), m.gate2.assign(D, 1);
        m.a1.assign(param(layout_.layers[l].norm1), param(layout_.layers[l].norm1) + D);
        m.a2.assign(param(layout_.layers[l].norm2), param(layout_.layers[l].norm2) + D);
      }
      final_shift_.assign(D, 0), final_scale_.assign(D, 0);
      final_a_.assign(param(layout_.norm_final), param(layout_.norm_final) + D);
      return;
    }
    // sigma = 0: the timestep embedding is [cos(0) x128, sin(0) x128] = [1 x128, 0 x128].
    std::vector<Scalar> e(256, Scalar(0));
    std::fill(e.begin(), e.begin() + 128, Scalar(1));
    std::vector<Scalar> h1(C), h2(C);
    linear(e.data(), 1, 256, param(layout_.sigma0_w), param(layout_.sigma0_b), C, h1.data());
    sigma_hidden_ = h1;
    for (auto& v : h1) v = kernels::scalar::silu(v);
    linear(h1.data(), 1, C, param(layout_.sigma2_w), param(layout_.sigma2_b), C, h2.data());
    sigma_out_ = h2;
    cond_.resize(C);
    for (int i = 0; i < C; ++i) cond_[i] = kernels::scalar::silu(h2[i]);
    std::vector<Scalar> mod(6 * D);
    for (int l = 0; l < config_.n_blocks; ++l) {
      const auto& o = layout_.layers[l];
      linear(cond_.data(), 1, C, param(o.ada_w), param(o.ada_b), 6 * D, mod.data());
      auto& m = mods_[l];
      auto chunk = [&](int i) {
        return std::vector<Scalar>(mod.begin() + i * D, mod.begin() + (i + 1) * D);
      };
      m.shift1 = chunk(0), m.scale1 = chunk(1), m.gate1 = chunk(2);
      m.shift2 = chunk(3), m.scale2 = chunk(4), m.gate2 = chunk(5);
      m.a1.resize(D), m.a2.resize(D);
      for (int i = 0; i < D; ++i) {
        m.a1[i] = param(o.norm1)[i] * (Scalar(1) + m.scale1[i]);
        m.a2[i] = param(o.norm2)[i] * (Scalar(1) + m.scale2[i]);
      }
    }
    std::vector<Scalar> fmod(2 * D);
    linear(cond_.data(), 1, C, param(layout_.out_ada_w), param(layout_.out_ada_b), 2 * D,
           fmod.data());
    final_shift_.assign(fmod.begin(), fmod.begin() + D);
    final_scale_.assign(fmod.begin() + D, fmod.end());
    final_a_.resize(D);
    for (int i = 0; i < D; ++i)
      final_a_[i] = param(layout_.norm_final)[i] * (Scalar(1) + final_scale_[i]);
  }

 public:
  // Internals the backward pass needs: the pre-activation of the conditioning MLP.
  const std::vector<Scalar>& sigma_hidden() const {
    return sigma_hidden_;
  }
  const std::vector<Scalar>& sigma_out() const {
    return sigma_out_;
  }

 private:
  // LN without affine, then * a + b, row by row. Stores mean/rstd when asked.
  static void norm_modulate(const Scalar* x, int64_t N, int D, const Scalar* a, const Scalar* b,
                            Scalar* y, Scalar* mean, Scalar* rstd) {
#pragma omp parallel for schedule(static) if (N * D > 32768)
    for (int64_t i = 0; i < N; ++i) {
      Scalar m;
      Scalar r = kernels::layer_norm<Scalar>(x + i * D, y + i * D, D, Scalar(1e-5), &m);
      kernels::scale_shift<Scalar>(y + i * D, a, b, D);
      if (mean) mean[i] = m, rstd[i] = r;
    }
  }

  // One transformer layer over N rows (batch sequences of rows_seq rows), in place on the
  // residual stream x; a keeps the layer's input and intermediate activations.
  template <class PosFn, class Mask>
  void layer_forward(int l, std::vector<Scalar>& x, int64_t N, int batch, int rows_seq,
                     PosFn pos_of, const std::vector<Scalar>& cos, const std::vector<Scalar>& sin,
                     const Mask& mask, LayerActivations<Scalar>& a,
                     const Dropout& dropout = {}) const {
    const int D = config_.hidden_dim, H = config_.n_heads, Dh = config_.head_dim(), F = 4 * D;
    const auto& o = layout_.layers[l];
    const auto& m = mods_[l];
    a.x_in = x;
    a.ln1_mean.resize(N), a.ln1_rstd.resize(N), a.h1.resize(N * D);
    norm_modulate(x.data(), N, D, m.a1.data(), m.shift1.data(), a.h1.data(), a.ln1_mean.data(),
                  a.ln1_rstd.data());
    a.qkv.resize(N * 3 * D);
    linear(a.h1.data(), N, D, param(o.attn_qkv), nullptr, 3 * D, a.qkv.data());
    apply_rotary(a.qkv.data(), N, pos_of, cos, sin);
    a.att.resize(N * D);
    a.lse.resize(size_t(batch) * H * rows_seq);
    for (int b = 0; b < batch; ++b) {
      const Scalar* base = a.qkv.data() + int64_t(b) * rows_seq * 3 * D;
      AttentionArgs<Scalar> args;
      args.q = base, args.k = base + D, args.v = base + 2 * D;
      args.ldq = args.ldk = args.ldv = 3 * D;
      args.out = a.att.data() + int64_t(b) * rows_seq * D, args.ldo = D;
      args.lse = a.lse.data() + size_t(b) * H * rows_seq;
      args.nq = args.nk = rows_seq, args.n_heads = H, args.head_dim = Dh;
      attention_forward<Attention>(args, mask);
    }
    a.attn_proj.resize(N * D);
    linear(a.att.data(), N, D, param(o.attn_out), nullptr, D, a.attn_proj.data());
    a.x_mid = x;
    const Scalar keep_scale = Scalar(1.0 / (1.0 - dropout.p));
    if (dropout.active()) {
      a.keep_attn.resize(size_t(N) * D);
      detail::dropout_keep_mask(dropout, l, 0, N, D, a.keep_attn.data());
      gate_add_dropout(a.x_mid.data(), N, D, m.gate1.data(), a.attn_proj.data(), a.keep_attn.data(),
                       keep_scale);
    } else {
      a.keep_attn.clear();
      gate_add(a.x_mid.data(), N, D, m.gate1.data(), a.attn_proj.data());
    }
    a.ln2_mean.resize(N), a.ln2_rstd.resize(N), a.h2.resize(N * D);
    norm_modulate(a.x_mid.data(), N, D, m.a2.data(), m.shift2.data(), a.h2.data(),
                  a.ln2_mean.data(), a.ln2_rstd.data());
    a.mlp_pre.resize(N * F), a.mlp_act.resize(N * F), a.mlp_out.resize(N * D);
    linear(a.h2.data(), N, D, param(o.mlp0_w), param(o.mlp0_b), F, a.mlp_pre.data());
#pragma omp parallel for schedule(static) if (N * F > 32768)
    for (int64_t i = 0; i < N; ++i)
      kernels::gelu_tanh<Scalar>(a.mlp_pre.data() + i * F, a.mlp_act.data() + i * F, F);
    linear(a.mlp_act.data(), N, F, param(o.mlp2_w), param(o.mlp2_b), D, a.mlp_out.data());
    x = a.x_mid;
    if (dropout.active()) {
      a.keep_mlp.resize(size_t(N) * D);
      detail::dropout_keep_mask(dropout, l, 1, N, D, a.keep_mlp.data());
      gate_add_dropout(x.data(), N, D, m.gate2.data(), a.mlp_out.data(), a.keep_mlp.data(),
                       keep_scale);
    } else {
      a.keep_mlp.clear();
      gate_add(x.data(), N, D, m.gate2.data(), a.mlp_out.data());
    }
  }

  // x += gate * (keep * s * y): the gated residual of a dropped-out branch.
  static void gate_add_dropout(Scalar* x, int64_t N, int D, const Scalar* gate, const Scalar* y,
                               const uint8_t* keep, Scalar s) {
#pragma omp parallel for schedule(static) if (N * D > 32768)
    for (int64_t i = 0; i < N; ++i)
      for (int j = 0; j < D; ++j)
        x[i * D + j] += gate[j] * (keep[i * D + j] ? s * y[i * D + j] : Scalar(0));
  }

  static void gate_add(Scalar* x, int64_t N, int D, const Scalar* gate, const Scalar* y) {
#pragma omp parallel for schedule(static) if (N * D > 32768)
    for (int64_t i = 0; i < N; ++i) kernels::gated_add<Scalar>(x + i * D, gate, y + i * D, D);
  }

  template <class PosFn>
  void apply_rotary(Scalar* qkv, int64_t N, PosFn pos_of, const std::vector<Scalar>& cos,
                    const std::vector<Scalar>& sin) const {
    const int D = config_.hidden_dim, H = config_.n_heads, Dh = config_.head_dim(), half = Dh / 2;
#pragma omp parallel for schedule(static) if (N * D > 32768)
    for (int64_t i = 0; i < N; ++i) {
      const int p = pos_of(int(i));
      const Scalar* c = cos.data() + size_t(p) * half;
      const Scalar* s = sin.data() + size_t(p) * half;
      for (int h = 0; h < H; ++h) {
        kernels::rotary<Scalar>(qkv + i * 3 * D + h * Dh, c, s, Dh);      // q
        kernels::rotary<Scalar>(qkv + i * 3 * D + D + h * Dh, c, s, Dh);  // k
      }
    }
  }

  void output_layer(const std::vector<Scalar>& x, int64_t rows, std::vector<Scalar>& mean,
                    std::vector<Scalar>& rstd, std::vector<Scalar>& hf, std::vector<Scalar>& logits,
                    bool decode = false) const {
    const int D = config_.hidden_dim, V = config_.vocab_size;
    mean.resize(rows), rstd.resize(rows), hf.resize(rows * D);
    norm_modulate(x.data(), rows, D, final_a_.data(), final_shift_.data(), hf.data(), mean.data(),
                  rstd.data());
    logits.resize(size_t(rows) * V);
    if (decode)
      decode_linear(hf.data(), rows, D, layout_.out_w, param(layout_.out_b), V, logits.data());
    else
      linear(hf.data(), rows, D, param(layout_.out_w), param(layout_.out_b), V, logits.data());
  }

  // A linear layer of a decode call: W at `w_offset` in the flat parameters, or its packed
  // copy when the model decodes with packed or bf16 weights. `gelu`: y = gelu_tanh of the
  // outputs (in the packed kernel's epilogue, else a pass after it; the same bits).
  void decode_linear(const Scalar* x, int64_t N, int64_t in, int64_t w_offset, const Scalar* b,
                     int64_t out, Scalar* y, bool gelu = false) const {
    if constexpr (std::is_same_v<Scalar, float>) {
      if (decode_weights_ != DecodeWeights::f32) {
        const auto it = std::lower_bound(packed_offsets_.begin(), packed_offsets_.end(),
                                         std::pair<int64_t, int64_t>{w_offset, 0});
        if (it == packed_offsets_.end() || it->first != w_offset)
          fail("decode: no packed copy of the weights at offset " + std::to_string(w_offset));
        auto run = [&](const auto* P) {
          if (gelu)
            kernels::simd::linear_packed_gelu(x, N, in, P, b, out, y);
          else
            kernels::simd::linear_packed(x, N, in, P, b, out, y);
        };
        if (decode_weights_ == DecodeWeights::bf16)
          run(packed_bf16_.data() + it->second);
        else
          run(packed_f32_.data() + it->second);
        return;
      }
    }
    linear(x, N, in, param(w_offset), b, out, y, true);
    if (gelu) {
#pragma omp parallel for schedule(static) if (N * out > 32768)
      for (int64_t i = 0; i < N; ++i) kernels::gelu_tanh<Scalar>(y + i * out, y + i * out, out);
    }
  }

  // The packed copies of the matrices decode calls stream (empty with DecodeWeights::f32).
  void pack_decode_weights() {
    packed_offsets_.clear();
    packed_f32_ = {};
    packed_bf16_ = {};
    if constexpr (std::is_same_v<Scalar, float>) {
      if (decode_weights_ == DecodeWeights::f32) return;
      const int64_t D = config_.hidden_dim, F = 4 * D, V = config_.vocab_size;
      struct Matrix {
        int64_t offset, rows, cols;
      };
      std::vector<Matrix> matrices;
      for (const auto& o : layout_.layers)
        for (Matrix m : {Matrix{o.attn_qkv, 3 * D, D}, Matrix{o.attn_out, D, D},
                         Matrix{o.mlp0_w, F, D}, Matrix{o.mlp2_w, D, F}})
          matrices.push_back(m);
      matrices.push_back({layout_.out_w, V, D});
      int64_t total = 0;
      for (const auto& m : matrices) {
        packed_offsets_.emplace_back(m.offset, total);
        total += kernels::packed_size(m.rows, m.cols);
      }
      std::sort(packed_offsets_.begin(), packed_offsets_.end());
      auto pack = [&](auto& storage) {
        storage.resize(size_t(total));
        for (const auto& m : matrices) {
          const auto it = std::lower_bound(packed_offsets_.begin(), packed_offsets_.end(),
                                           std::pair<int64_t, int64_t>{m.offset, 0});
          kernels::pack_weights(param(m.offset), m.rows, m.cols, storage.data() + it->second);
        }
      };
      if (decode_weights_ == DecodeWeights::bf16)
        pack(packed_bf16_);
      else
        pack(packed_f32_);
    }
  }

  // The layers of a decode call. Rows per sequence: the optional clean block to commit
  // (it attends to the cached window and itself), then the current block (it attends to
  // the window as it will be after that commit, and to itself). Each row's keys and
  // values go to the cache's scratch rows. Returns the residual stream [batch*rows, D].
  std::vector<Scalar> decode_layers(std::span<const int32_t> commit,
                                    std::span<const int32_t> tokens, KVCache<Scalar>& cache) const {
    const int Bp = block_size(), batch = cache.batch();
    const int D = config_.hidden_dim, H = config_.n_heads, Dh = config_.head_dim(), F = 4 * D;
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
    for (int b = 0; b < batch; ++b)
      for (int r = 0; r < R; ++r) {
        const bool is_commit = !commit.empty() && r < Bp;
        const int32_t tok =
            is_commit ? commit[size_t(b) * Bp + r] : tokens[size_t(b) * Bp + (r % Bp)];
        const Scalar* e = param(layout_.embedding) + int64_t(tok) * D;
        std::copy(e, e + D, x.data() + (int64_t(b) * R + r) * D);
      }
    std::vector<Scalar> cos, sin;
    rotary_table(cache.next_position(), R, cos, sin);
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
    std::vector<Scalar> h(N * D), qkv(N * 3 * D), att(N * D), proj(N * D), act(N * F);
    for (int l = 0; l < config_.n_blocks; ++l) {
      const auto& o = layout_.layers[l];
      const auto& m = mods_[l];
      norm_modulate(x.data(), N, D, m.a1.data(), m.shift1.data(), h.data(), nullptr, nullptr);
      decode_linear(h.data(), N, D, o.attn_qkv, nullptr, 3 * D, qkv.data());
      apply_rotary(
          qkv.data(), N, [R](int i) { return i % R; }, cos, sin);
      auto attend = [&](int b) {
        Scalar* K = cache.keys(l, b);
        Scalar* Vv = cache.values(l, b);
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
        attention_forward<Attention>(args, mask);
      };
      // A batch that can occupy the threads runs one sequence per thread (its attention
      // then runs on that thread): one parallel region per layer instead of one per
      // sequence. Otherwise each sequence's attention spreads over the threads. (Not an
      // `if` clause: an inactive outer region would make every inner one a nested team,
      // which libgomp builds afresh each time.)
      if (batch > 1 && batch >= omp_get_max_threads()) {
#pragma omp parallel for schedule(static)
        for (int b = 0; b < batch; ++b) attend(b);
      } else {
        for (int b = 0; b < batch; ++b) attend(b);
      }
      decode_linear(att.data(), N, D, o.attn_out, nullptr, D, proj.data());
      gate_add(x.data(), N, D, m.gate1.data(), proj.data());
      norm_modulate(x.data(), N, D, m.a2.data(), m.shift2.data(), h.data(), nullptr, nullptr);
      decode_linear(h.data(), N, D, o.mlp0_w, param(o.mlp0_b), F, act.data(), /*gelu=*/true);
      decode_linear(act.data(), N, F, o.mlp2_w, param(o.mlp2_b), D, proj.data());
      gate_add(x.data(), N, D, m.gate2.data(), proj.data());
    }
    return x;
  }

  ModelConfig config_;
  Block block_;
  Noise noise_;
  ParameterLayout layout_;
  // Decode streams all of it every call: huge pages where the system grants them.
  std::vector<Scalar, detail::HugePageAllocator<Scalar>> params_;
  DecodeWeights decode_weights_ = DecodeWeights::f32;
  // With DecodeWeights::f32_packed or bf16: the decode matrices packed (kernels/gemm.hpp),
  // and (offset in params_, offset in the packed copy) for each, sorted; else empty.
  std::vector<std::pair<int64_t, int64_t>> packed_offsets_;
  std::vector<float, detail::HugePageAllocator<float>> packed_f32_;
  std::vector<kernels::bfloat16, detail::HugePageAllocator<kernels::bfloat16>> packed_bf16_;
  std::vector<Scalar> cond_, sigma_hidden_, sigma_out_;
  std::vector<Modulation<Scalar>> mods_;
  std::vector<Scalar> final_shift_, final_scale_, final_a_;
};

}  // namespace bd3
