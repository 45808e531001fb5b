// The few-rows linear kernel equals its scalar twin.
#include <bd3/kernels/gemm.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

TEST_CASE("linear_small_m equals its scalar twin", "[kernels]") {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (int M : {1, 2, 3, 4, 5, 8, 9, 16, 17})
    for (int K : {1, 7, 8, 33, 256})
      for (int N : {1, 5, 64}) {
        std::vector<float> x(M * K), W(N * K), b(N), y(M * N), ref(M * N);
        for (auto* v : {&x, &W, &b})
          for (auto& e : *v) e = dist(rng);
        for (bool bias : {false, true}) {
          bd3::kernels::simd::linear_small_m(x.data(), M, K, W.data(), bias ? b.data() : nullptr, N,
                                             y.data());
          bd3::kernels::scalar::linear_small_m(x.data(), M, K, W.data(), bias ? b.data() : nullptr,
                                               N, ref.data());
          for (int i = 0; i < M * N; ++i) {
            INFO("M " << M << " K " << K << " N " << N << " bias " << bias);
            REQUIRE(std::abs(y[i] - ref[i]) <= 1e-5f * (1.0f + std::sqrt(float(K))));
          }
        }
      }
}
