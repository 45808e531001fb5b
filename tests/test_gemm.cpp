// The decode linear kernels equal their scalar twin, and give each row the same bits
// whatever rows share the call (what batched sampling relies on).
#include <bd3/kernels/gemm.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <vector>

namespace {
using Kernel = void (*)(const float*, int64_t, int64_t, const float*, const float*, int64_t,
                        float*);

// kernel == scalar::linear_small_m (the scalar twin of both decode kernels) on every shape.
void check_against_scalar(Kernel kernel, std::initializer_list<int> Ms,
                          std::initializer_list<int> Ns, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (int M : Ms)
    for (int K : {1, 7, 8, 33, 256})
      for (int N : Ns) {
        std::vector<float> x(M * K), W(N * K), b(N), y(M * N), ref(M * N);
        for (auto* v : {&x, &W, &b})
          for (auto& e : *v) e = dist(rng);
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
  check_against_scalar(bd3::kernels::simd::linear_small_m, {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17},
                       {1, 2, 3, 5, 6, 7, 64}, 3);
}

TEST_CASE("linear_tiled equals its scalar twin", "[kernels]") {
  check_against_scalar(bd3::kernels::simd::linear_tiled, {1, 2, 3, 7, 9, 64, 65, 130},
                       {1, 3, 4, 5, 64, 67}, 4);
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
