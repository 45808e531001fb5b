// Decode attention (DecodeMask: one or two groups of a block's query rows, each against a
// contiguous key range) of the block-sparse backend (its decode kernel up to
// detail::decode_kernel_max_rows rows per group, its tiles above) and the SIMD backend
// against the scalar reference loops, for head sizes and key counts on both sides of the
// SIMD width, in float and double, with the log-sum-exp, for keys and values with the
// heads side by side in a row and in the KV cache's head-major layout; and the same bits
// with 1 and 3 threads.
#include <catch2/catch.hpp>

#include <bd3/layers/attention.hpp>

#include "parity_common.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <type_traits>
#include <vector>

using namespace bd3;

namespace {

template <class T>
struct DecodeCase {
  int block_size, groups, n_heads, head_dim;
  KeyRange ranges[2];
  int nk() const { return std::max(ranges[0].end, groups == 2 ? ranges[1].end : 0); }
  int nq() const { return groups * block_size; }
  int dim() const { return n_heads * head_dim; }
  std::vector<T> q, k, v;
  // Head-major keys and values (the KV cache's layout): head h's row j at
  // h * capacity * head_dim + j * head_dim, with capacity > nk as in the cache.
  bool head_major = false;
  int capacity() const { return nk() + 3; }

  DecodeCase as_head_major() const {
    DecodeCase c = *this;
    c.head_major = true;
    c.k.assign(size_t(n_heads) * capacity() * head_dim, T(0));
    c.v = c.k;
    for (int h = 0; h < n_heads; ++h)
      for (int j = 0; j < nk(); ++j)
        for (int d = 0; d < head_dim; ++d) {
          const size_t from = size_t(j) * dim() + h * head_dim + d;
          const size_t to = (size_t(h) * capacity() + j) * head_dim + d;
          c.k[to] = k[from];
          c.v[to] = v[from];
        }
    return c;
  }

  void fill(unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> d(-2, 2);
    // q rows with a stride wider than the heads (as the model's packed qkv rows).
    q.resize(size_t(nq()) * 3 * dim());
    k.resize(size_t(nk()) * dim());
    v.resize(size_t(nk()) * dim());
    for (auto* buf : {&q, &k, &v})
      for (auto& x : *buf) x = T(d(rng));
  }

  template <class Backend>
  std::pair<std::vector<T>, std::vector<T>> run() const {
    DecodeMask mask{block_size, groups, {ranges[0], ranges[1]}};
    std::vector<T> out(size_t(nq()) * dim(), T(-7)), lse(size_t(n_heads) * nq(), T(-7));
    AttentionArgs<T> a;
    a.q = q.data(), a.ldq = 3 * dim();
    a.k = k.data(), a.v = v.data(), a.ldk = a.ldv = dim();
    if (head_major) {
      a.ldk = a.ldv = head_dim;
      a.head_stride_k = a.head_stride_v = int64_t(capacity()) * head_dim;
    }
    a.out = out.data(), a.ldo = dim();
    a.lse = lse.data();
    a.nq = nq(), a.nk = nk(), a.n_heads = n_heads, a.head_dim = head_dim;
    Backend::forward(a, mask);
    return {out, lse};
  }
};

template <class T>
void check_backends(double tolerance) {
  unsigned seed = 1;
  for (int head_dim : {1, 3, 8, 13, 64})
    for (int block_size : {1, 2, 4, 5, 16, 33})
      for (int nk : {1, 7, 8, 9, 40, 67})
        for (int groups : {1, 2}) {
          if (groups == 2 && nk < 2 * block_size) continue;
          DecodeCase<T> c{block_size, groups, 3, head_dim, {}, {}, {}, {}};
          // Group 0 (the commit block) sees the first nk - block_size keys (itself
          // included); group 1 all of them, or, with a full window, all but the oldest.
          c.ranges[0] = groups == 2 ? KeyRange{0, nk - block_size} : KeyRange{0, nk};
          c.ranges[1] = KeyRange{nk % 3 == 0 ? 1 : 0, nk};
          c.fill(seed++);
          INFO("head_dim " << head_dim << ", block " << block_size << ", keys " << nk << ", groups "
                           << groups);
          const auto ref = c.template run<ScalarAttention>();
          for (const auto& layout : {c, c.as_head_major()}) {
            INFO("head-major " << layout.head_major);
            if (layout.head_major) {  // the reference loops give the same bits in both layouts
              const auto hm = layout.template run<ScalarAttention>();
              CHECK(hm.first == ref.first);
              CHECK(hm.second == ref.second);
            }
            const auto sparse = layout.template run<BlockSparseAttention>();
            CHECK(bd3::test::relative_max_diff(sparse.first, ref.first) <= tolerance);
            CHECK(bd3::test::relative_max_diff(sparse.second, ref.second) <= tolerance);
            if constexpr (std::is_same_v<T, float>) {  // SimdAttention is float only
              const auto simd = layout.template run<SimdAttention>();
              CHECK(bd3::test::relative_max_diff(simd.first, ref.first) <= tolerance);
              CHECK(bd3::test::relative_max_diff(simd.second, ref.second) <= tolerance);
            }
          }
        }
}

}  // namespace

TEST_CASE("decode attention of every backend equals the scalar reference (float)",
          "[attention][decode]") {
  check_backends<float>(1e-5);
}

TEST_CASE("decode attention of every backend equals the scalar reference (double)",
          "[attention][decode]") {
  check_backends<double>(1e-12);
}

TEST_CASE("decode attention gives the same bits with 1 and 3 threads",
          "[attention][decode][threads]") {
  DecodeCase<float> c0{4, 2, 5, 64, {{0, 300}, {4, 304}}, {}, {}, {}};
  c0.fill(99);
  const auto c = c0.as_head_major();
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = c.run<BlockSparseAttention>();
  omp_set_num_threads(3);
  const auto three = c.run<BlockSparseAttention>();
  omp_set_num_threads(before);
  CHECK(one.first == three.first);
  CHECK(one.second == three.second);
}

// The decode kernel tiles a block's rows in fours, pairs and singles (scores and weighted
// values): each row's output must be the bits it gets alone, whatever the block size, or
// the sampler's tokens would depend on how many rows share a call.
template <class T>
void check_rows_independent() {
  for (int head_dim : {13, 64})
    for (int nk : {9, 67})
      for (int block_size : {2, 3, 4, 5, 7, 8, 16}) {
        DecodeCase<T> c0{block_size, 1, 3, head_dim, {{0, nk}, {}}, {}, {}, {}};
        c0.fill(unsigned(1000 + block_size + nk + head_dim));
        const auto c = c0.as_head_major();
        const auto all = c.template run<BlockSparseAttention>();
        for (int i = 0; i < block_size; ++i) {
          DecodeCase<T> one = c;
          one.block_size = 1;
          const size_t row = size_t(3) * c.dim();
          one.q.assign(c.q.begin() + i * row, c.q.begin() + (i + 1) * row);
          const auto alone = one.template run<BlockSparseAttention>();
          INFO("head_dim " << head_dim << ", keys " << nk << ", block " << block_size << ", row "
                           << i);
          const std::vector<T> got(all.first.begin() + i * c.dim(),
                                   all.first.begin() + (i + 1) * c.dim());
          CHECK(got == alone.first);
          for (int h = 0; h < c.n_heads; ++h)
            CHECK(all.second[h * block_size + i] == alone.second[h]);
        }
      }
}

TEST_CASE("decode attention gives a row the same bits whatever the block size",
          "[attention][decode]") {
  check_rows_independent<float>();
  check_rows_independent<double>();
}

// The block-sparse forward and backward mask the training mask's rows through these
// intervals instead of asking allowed() per score: they must be the same set of keys.
TEST_CASE("the training mask's allowed intervals are exactly its allowed keys",
          "[attention][mask]") {
  for (int L : {1, 6, 8, 12})
    for (int B : {1, 2, 3, 4, 6, 12}) {
      if (L % B != 0) continue;
      const TrainingMask mask{L, B};
      for (int q = 0; q < 2 * L; ++q) {
        KeyRange intervals[2];
        const int n = detail::allowed_intervals(mask, q, intervals);
        REQUIRE(n >= 1);
        for (int k = 0; k < 2 * L; ++k) {
          bool inside = false;
          for (int i = 0; i < n; ++i) inside |= k >= intervals[i].begin && k < intervals[i].end;
          CAPTURE(L, B, q, k);
          CHECK(inside == mask.allowed(q, k));
        }
      }
    }
  const DecodeMask decode{4, 1, {{0, 8}, {}}};
  KeyRange unused[2];
  CHECK(detail::allowed_intervals(decode, 0, unused) == -1);  // asked per key instead
}
