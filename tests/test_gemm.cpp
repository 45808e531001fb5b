// The decode linear kernels equal their scalar twin, give each row the same bits
// whatever rows share the call (what batched sampling relies on), and with bfloat16
// weights give the bits the float kernels give on the widened weights.
#include <bd3/kernels/gemm.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <random>
#include <vector>

namespace {
using bd3::kernels::bfloat16;
template <class Wt>
using Kernel = void (*)(const float*, int64_t, int64_t, const Wt*, const float*, int64_t, float*);

std::vector<bfloat16> rounded(const std::vector<float>& w) {
  std::vector<bfloat16> h(w.size());
  for (size_t i = 0; i < w.size(); ++i) h[i] = bd3::kernels::to_bfloat16(w[i]);
  return h;
}

// kernel == scalar::linear_small_m (the scalar twin of both decode kernels) on every shape,
// for float weights and for the same weights rounded to bfloat16.
template <class Wt>
void check_against_scalar(Kernel<Wt> kernel, std::initializer_list<int> Ms,
                          std::initializer_list<int> Ns, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (int M : Ms)
    for (int K : {1, 7, 8, 16, 33, 256})
      for (int N : Ns) {
        std::vector<float> x(M * K), Wf(N * K), b(N), y(M * N), ref(M * N);
        for (auto* v : {&x, &Wf, &b})
          for (auto& e : *v) e = dist(rng);
        std::vector<Wt> W;
        if constexpr (std::is_same_v<Wt, float>)
          W = Wf;
        else
          W = rounded(Wf);
        for (bool bias : {false, true}) {
          const float* bp = bias ? b.data() : nullptr;
          kernel(x.data(), M, K, W.data(), bp, N, y.data());
          bd3::kernels::scalar::linear_small_m(x.data(), M, K, W.data(), bp, N, ref.data());
          for (int i = 0; i < M * N; ++i) {
            INFO("M " << M << " K " << K << " N " << N << " bias " << bias);
            REQUIRE(std::abs(y[i] - ref[i]) <= 1e-5f * (1.0f + std::sqrt(float(K))));
          }
        }
      }
}
}  // namespace

TEST_CASE("linear_small_m equals its scalar twin", "[kernels]") {
  // N covers every remainder of the W rows streamed together (1, 2 or 4 per step).
  check_against_scalar<float>(bd3::kernels::simd::linear_small_m<float>,
                              {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17}, {1, 2, 3, 5, 6, 7, 64}, 3);
  check_against_scalar<bfloat16>(bd3::kernels::simd::linear_small_m<bfloat16>,
                                 {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17}, {1, 2, 3, 5, 6, 7, 64}, 13);
}

TEST_CASE("linear_tiled equals its scalar twin", "[kernels]") {
  check_against_scalar<float>(bd3::kernels::simd::linear_tiled<float>, {1, 2, 3, 7, 9, 64, 65, 130},
                              {1, 3, 4, 5, 64, 67}, 4);
  check_against_scalar<bfloat16>(bd3::kernels::simd::linear_tiled<bfloat16>,
                                 {1, 2, 3, 7, 9, 64, 65, 130}, {1, 3, 4, 5, 64, 67}, 14);
}

TEST_CASE("bfloat16 rounding: nearest, ties to even, NaN and overflow", "[kernels][bf16]") {
  using bd3::kernels::to_bfloat16;
  using bd3::kernels::to_float;
  auto from_bits = [](uint32_t u) { return std::bit_cast<float>(u); };
  // Exactly representable values survive the round trip.
  for (float f : {0.0f, -0.0f, 1.0f, -2.5f, 0.15625f, 65536.0f, 0x1p-130f})
    CHECK(to_float(to_bfloat16(f)) == f);
  CHECK(to_bfloat16(1.0f).bits == 0x3F80);
  // Below half an ulp rounds down, above rounds up, a tie goes to the even mantissa.
  CHECK(to_bfloat16(from_bits(0x3F807FFFu)).bits == 0x3F80);
  CHECK(to_bfloat16(from_bits(0x3F808001u)).bits == 0x3F81);
  CHECK(to_bfloat16(from_bits(0x3F808000u)).bits == 0x3F80);  // tie, 0x3F80 even
  CHECK(to_bfloat16(from_bits(0x3F818000u)).bits == 0x3F82);  // tie, 0x3F81 odd: up
  // Negative values round symmetrically.
  CHECK(to_bfloat16(from_bits(0xBF808001u)).bits == 0xBF81);
  // Infinities stay; the largest floats round past the largest bfloat16 to infinity.
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(to_float(to_bfloat16(inf)) == inf);
  CHECK(to_float(to_bfloat16(-inf)) == -inf);
  CHECK(to_float(to_bfloat16(std::numeric_limits<float>::max())) == inf);
  CHECK(to_bfloat16(from_bits(0x7F7F7FFFu)).bits == 0x7F7F);  // just below: finite
  // NaN stays NaN, of the same sign, even with only low mantissa bits set (which a plain
  // rounding add would turn into infinity).
  for (uint32_t nan : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu}) {
    const bfloat16 h = to_bfloat16(from_bits(nan));
    CHECK(std::isnan(to_float(h)));
    CHECK((h.bits >> 15) == (nan >> 31));
  }
  // Subnormals keep their top bits (bfloat16 has float's exponent range).
  CHECK(to_bfloat16(from_bits(0x00010000u)).bits == 0x0001);
  // Widening is exact: every bfloat16 pattern that is not NaN comes back bit for bit.
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float f = to_float(bfloat16{uint16_t(bits)});
    if (!std::isnan(f)) REQUIRE(to_bfloat16(f).bits == bits);
  }
}

TEST_CASE("bfloat16 weights give the float kernels' bits on the widened weights",
          "[kernels][bf16]") {
  // The identity decoding with bfloat16 weights relies on: same FMAs in the same order, so
  // the results are equal, not close. Every row count of both kernels, K with and
  // without a tail, with and without a bias.
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (int M : {1, 2, 3, 4, 5, 8, 9, 16, 33})
    for (int K : {7, 16, 40, 257})
      for (int N : {1, 5, 67}) {
        std::vector<float> x(M * K), Wf(N * K), b(N), y16(M * N), y32(M * N);
        for (auto* v : {&x, &Wf, &b})
          for (auto& e : *v) e = dist(rng);
        const auto W16 = rounded(Wf);
        std::vector<float> widened(W16.size());
        for (size_t i = 0; i < W16.size(); ++i) widened[i] = bd3::kernels::to_float(W16[i]);
        for (bool bias : {false, true}) {
          const float* bp = bias ? b.data() : nullptr;
          INFO("M " << M << " K " << K << " N " << N << " bias " << bias);
          bd3::kernels::simd::linear_few_rows(x.data(), M, K, W16.data(), bp, N, y16.data());
          bd3::kernels::simd::linear_few_rows(x.data(), M, K, widened.data(), bp, N, y32.data());
          for (int i = 0; i < M * N; ++i) REQUIRE(y16[i] == y32[i]);
          bd3::kernels::simd::linear_tiled(x.data(), M, K, W16.data(), bp, N, y16.data());
          bd3::kernels::simd::linear_tiled(x.data(), M, K, widened.data(), bp, N, y32.data());
          for (int i = 0; i < M * N; ++i) REQUIRE(y16[i] == y32[i]);
        }
      }
}

TEST_CASE("a row's result does not depend on the rows beside it", "[kernels][batch]") {
  // The same 4 rows alone (linear_small_m) and as rows 8..11 of 40 (linear_tiled, and
  // linear_few_rows on both sides): bit-identical, with and without a bias, for K with
  // and without a tail.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (int K : {64, 68, 256})
    for (int N : {5, 7, 96}) {
      const int M = 40, r0 = 8, R = 4;
      std::vector<float> x(M * K), W(N * K), b(N), all(M * N), alone(8 * N);
      for (auto* v : {&x, &W, &b})
        for (auto& e : *v) e = dist(rng);
      for (bool bias : {false, true}) {
        const float* bp = bias ? b.data() : nullptr;
        bd3::kernels::simd::linear_few_rows(x.data(), M, K, W.data(), bp, N, all.data());
        bd3::kernels::simd::linear_few_rows(x.data() + r0 * K, R, K, W.data(), bp, N, alone.data());
        INFO("K " << K << " N " << N << " bias " << bias);
        for (int i = 0; i < R * N; ++i) REQUIRE(all[r0 * N + i] == alone[i]);
        for (int r : {1, 2, 3, 5, 8}) {  // every tile shape, as a row count of its own
          bd3::kernels::simd::linear_tiled(x.data() + r0 * K, r, K, W.data(), bp, N, alone.data());
          for (int i = 0; i < r * N; ++i) REQUIRE(all[r0 * N + i] == alone[i]);
        }
        for (int r = 1; r <= 8; ++r) {  // every streaming shape (R rows x C W rows)
          bd3::kernels::simd::linear_small_m(x.data() + r0 * K, r, K, W.data(), bp, N,
                                             alone.data());
          for (int i = 0; i < r * N; ++i) REQUIRE(all[r0 * N + i] == alone[i]);
        }
      }
    }
}

TEST_CASE("linear_packed: its scalar twin, rows alone, bfloat16 bits, GELU epilogue",
          "[kernels][packed]") {
  // Packed weights (pack_weights: tiles of packed_cols columns, zeros past N): the SIMD
  // kernel equals the scalar twin on the same tiles; each row gets the same bits whatever
  // rows share the call (one pass per tile up to 8 rows, groups of 4 beyond); bfloat16
  // tiles give the bits float tiles of the widened weights give. N covers partial tiles,
  // K a single k and odd counts.
  namespace k = bd3::kernels;
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (int K : {1, 7, 40, 257})
    for (int N : {1, 15, 16, 17, 50}) {
      const int M = 21;
      std::vector<float> x(M * K), W(N * K), b(N), all(M * N), part(M * N), ref(M * N);
      for (auto* v : {&x, &W, &b})
        for (auto& e : *v) e = dist(rng);
      std::vector<float> P(size_t(k::packed_size(N, K)), -1.0f);
      k::pack_weights(W.data(), N, K, P.data());
      for (int j = 0; j < N; ++j)  // the layout
        for (int kk = 0; kk < K; ++kk)
          REQUIRE(P[size_t(k::packed_index(j, kk, K))] == W[j * K + kk]);
      const int padded = int(P.size() / size_t(K));  // columns, N rounded up to tiles
      for (int j = N; j < padded; ++j)               // zeros past N
        for (int kk = 0; kk < K; ++kk) REQUIRE(P[size_t(k::packed_index(j, kk, K))] == 0.0f);
      std::vector<bfloat16> P16(P.size());
      k::pack_weights(W.data(), N, K, P16.data());
      std::vector<float> widened(P16.size());
      for (size_t i = 0; i < P16.size(); ++i) widened[i] = k::to_float(P16[i]);
      for (bool bias : {false, true}) {
        INFO("K " << K << " N " << N << " bias " << bias);
        const float* bp = bias ? b.data() : nullptr;
        k::simd::linear_packed(x.data(), M, K, P.data(), bp, N, all.data());
        k::scalar::linear_packed(x.data(), M, K, P.data(), bp, N, ref.data());
        for (int i = 0; i < M * N; ++i)
          REQUIRE(std::abs(all[i] - ref[i]) <= 1e-5f * (1.0f + std::sqrt(float(K))));
        for (int r0 : {0, 3})
          for (int r = 1; r <= 9; ++r) {  // every row count of one pass, and a group split
            k::simd::linear_packed(x.data() + r0 * K, r, K, P.data(), bp, N, part.data());
            for (int i = 0; i < r * N; ++i) REQUIRE(part[i] == all[r0 * N + i]);
          }
        k::simd::linear_packed(x.data(), M, K, P16.data(), bp, N, part.data());
        k::simd::linear_packed(x.data(), M, K, widened.data(), bp, N, all.data());
        for (int i = 0; i < M * N; ++i) REQUIRE(part[i] == all[i]);
        // The GELU epilogue: the bits of linear_packed and then a gelu_tanh pass over each
        // row, for every row count (whole tiles in registers, the partial one after).
        for (int r = 1; r <= M; r += (r < 9 ? 1 : 12)) {
          std::vector<float> fused(size_t(r) * N), apart(size_t(r) * N);
          k::simd::linear_packed(x.data(), r, K, P.data(), bp, N, apart.data());
          for (int i = 0; i < r; ++i)
            k::simd::gelu_tanh(apart.data() + i * N, apart.data() + i * N, N);
          k::simd::linear_packed_gelu(x.data(), r, K, P.data(), bp, N, fused.data());
          for (size_t i = 0; i < fused.size(); ++i) REQUIRE(fused[i] == apart[i]);
        }
        std::fill(part.begin(), part.end(), 7.0f);  // no rows: y untouched
        k::simd::linear_packed(x.data(), 0, K, P.data(), bp, N, part.data());
        REQUIRE(std::count(part.begin(), part.end(), 7.0f) == std::ptrdiff_t(part.size()));
      }
    }
}

// ---------------------------------------------------------------------------------------
// The training forward's blocked GEMM (kernels/sgemm.hpp).
#include <bd3/kernels/sgemm.hpp>

namespace {
// y = x W^T + b in double: what both the kernel and its twin approximate.
double gemm_nt_error(const std::vector<float>& x, const std::vector<float>& W,
                     const std::vector<float>* b, const std::vector<float>& y, int M, int K,
                     int N) {
  double worst = 0;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = b ? double((*b)[j]) : 0.0, mag = std::abs(s);
      for (int k = 0; k < K; ++k) {
        s += double(x[i * K + k]) * double(W[j * K + k]);
        mag += std::abs(double(x[i * K + k]) * double(W[j * K + k]));
      }
      worst = std::max(worst, std::abs(double(y[i * N + j]) - s) / (mag + 1e-30));
    }
  return worst;
}
}  // namespace

TEST_CASE("scalar gemm_nt is x W^T + b to float rounding", "[gemm][sgemm]") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (int M : {1, 13})
    for (int K : {0, 1, 383, 385, 800})
      for (int N : {1, 33}) {
        std::vector<float> x(M * K), W(N * K), b(N), y(M * N);
        for (auto* v : {&x, &W, &b})
          for (auto& e : *v) e = dist(rng);
        for (bool bias : {false, true}) {
          bd3::kernels::scalar::gemm_nt(x.data(), M, K, W.data(), bias ? b.data() : nullptr, N,
                                        y.data());
          INFO("M " << M << " K " << K << " N " << N << " bias " << bias);
          CHECK(gemm_nt_error(x, W, bias ? &b : nullptr, y, M, K, N) < 1e-5);
        }
      }
}

// Every operand layout (x or x^T, W[N, K] or W[K, N]), with leading dimensions wider than
// the slab (as the backward's per-thread slabs), writing or accumulating.
TEST_CASE("simd gemm equals its scalar twin in every layout, and both are the product",
          "[gemm][sgemm][simd]") {
  using bd3::kernels::GemmOperands;
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (const auto& [M, K, N] :
       {std::array<int, 3>{13, 385, 33}, {30, 20, 500}, {1, 7, 1}, {4, 0, 3}})
    for (bool xt : {false, true})
      for (bool wt : {false, true})
        for (bool acc : {false, true}) {
          const int pad = 5;  // extra columns in every leading dimension
          const int ldx = (xt ? M : K) + pad, ldw = (wt ? N : K) + pad, ldy = N + pad;
          std::vector<float> x(size_t((xt ? K : M) * ldx)), w(size_t((wt ? K : N) * ldw)), b(N),
              y0(size_t(M * ldy));
          for (auto* v : {&x, &w, &b, &y0})
            for (auto& e : *v) e = dist(rng);
          auto y = y0, ref = y0;
          GemmOperands o{.x = x.data(),
                         .ldx = ldx,
                         .x_transposed = xt,
                         .w = w.data(),
                         .ldw = ldw,
                         .w_transposed = wt,
                         .b = b.data(),
                         .y = y.data(),
                         .ldy = ldy,
                         .accumulate = acc};
          bd3::kernels::simd::gemm(o, M, K, N);
          o.y = ref.data();
          bd3::kernels::scalar::gemm(o, M, K, N);
          INFO("M " << M << " K " << K << " N " << N << " x^T " << xt << " W[K, N] " << wt
                    << " accumulate " << acc);
          int differing = 0;
          double worst = 0;
          for (int i = 0; i < M; ++i)
            for (int j = 0; j < ldy; ++j) {
              const size_t at = size_t(i * ldy + j);
              differing += std::bit_cast<uint32_t>(y[at]) != std::bit_cast<uint32_t>(ref[at]);
              if (j >= N) {  // the padding is never written
                differing += std::bit_cast<uint32_t>(y[at]) != std::bit_cast<uint32_t>(y0[at]);
                continue;
              }
              double s = acc ? double(y0[at]) : double(b[j]), mag = std::abs(s);
              for (int k = 0; k < K; ++k) {
                const double p = double(o.x_at(i, k)) * double(o.w_at(j, k));
                s += p, mag += std::abs(p);
              }
              worst = std::max(worst, std::abs(double(ref[at]) - s) / (mag + 1e-30));
            }
          CHECK(differing == 0);
          CHECK(worst < 1e-5);
        }
}

TEST_CASE("simd gemm_nt equals its scalar twin bit for bit", "[gemm][sgemm][simd]") {
  if constexpr (!bd3::kernels::simd::has_gemm_nt) {
    SUCCEED("no AVX-512: simd::gemm_nt is the twin itself and the model uses Eigen's GEMM");
  } else {
    std::mt19937 rng(12);
    std::uniform_real_distribution<float> dist(-1, 1);
    // Partial micro-panels of rows (12) and columns (32), partial slabs of k (384), more
    // than one block of columns (480) and of rows (1,020), k shorter than a transpose (16).
    const std::initializer_list<std::array<int, 3>> shapes = {
        {1, 1, 1},     {12, 16, 32},   {13, 17, 33}, {25, 384, 64}, {7, 385, 481},
        {24, 800, 97}, {1031, 40, 35}, {3, 0, 5},    {36, 15, 511}, {2, 768, 16}};
    for (const auto& [M, K, N] : shapes) {
      std::vector<float> x(size_t(M) * K), W(size_t(N) * K), b(N);
      for (auto* v : {&x, &W, &b})
        for (auto& e : *v) e = dist(rng);
      for (bool bias : {false, true}) {
        std::vector<float> y(size_t(M) * N, std::numeric_limits<float>::quiet_NaN()),
            ref(size_t(M) * N);
        const float* bp = bias ? b.data() : nullptr;
        bd3::kernels::simd::gemm_nt(x.data(), M, K, W.data(), bp, N, y.data());
        bd3::kernels::scalar::gemm_nt(x.data(), M, K, W.data(), bp, N, ref.data());
        INFO("M " << M << " K " << K << " N " << N << " bias " << bias);
        int differing = 0;
        for (size_t i = 0; i < y.size(); ++i)
          differing += std::bit_cast<uint32_t>(y[i]) != std::bit_cast<uint32_t>(ref[i]);
        CHECK(differing == 0);
      }
    }
  }
}
