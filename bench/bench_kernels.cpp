// Throughput of each xsimd kernel (kernels/simd.hpp) against its float scalar twin
// (kernels/scalar.hpp, compiled with the same flags, so GCC may auto-vectorise the simple
// loops) at n = 768 (d_model) and n = 50258 (the vocabulary), single thread.
// Counters: items_per_second = elements / s; bytes_per_second = the bytes the kernel
// names (inputs read once + outputs written once), i.e. a lower bound on its traffic.
// Inputs are kept in a steady state across iterations (no overflow, no subnormals).
// BM_linear: the decode linear kernels (kernels/gemm.hpp) against one Eigen GEMM on the
// shapes of the trained models' decode calls (hidden 256: qkv, MLP in/out, output layer
// of a 4097-token vocabulary; the `small` preset's output layer, 768 x 50258, read from
// memory), M = rows of the call; counters GFLOPs = 2 M K N / s, W_GBps = 4 K N bytes / s
// (2 K N for small_m_bf16, the weights stored as bfloat16). Also gemm_nt (kernels/sgemm.hpp)
// against Eigen on one thread's share of the `small` training forward's products.
//   OMP_NUM_THREADS=1 build/release/bench_kernels --benchmark_min_time=0.2
#include <bd3/detail/huge_pages.hpp>
#include <bd3/kernels/gemm.hpp>
#include <bd3/kernels/scalar.hpp>
#include <bd3/kernels/sgemm.hpp>
#include <bd3/kernels/simd.hpp>

#include <Eigen/Dense>

#include <benchmark/benchmark.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <random>
#include <utility>
#include <vector>

namespace {

namespace k = bd3::kernels;

std::vector<float> random_vec(std::ptrdiff_t n, float lo, float hi, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

void finish(benchmark::State& state, std::ptrdiff_t n, std::ptrdiff_t floats_touched) {
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * floats_touched * std::ptrdiff_t(sizeof(float)));
}

enum class Impl { simd, scalar };

template <Impl I>
void BM_layer_norm(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);
  auto x = random_vec(n, -2, 3, 1);
  std::vector<float> y(x.size());
  float mean = 0;
  for (auto _ : state) {
    float r = I == Impl::simd ? k::simd::layer_norm(x.data(), y.data(), n, 1e-5f, &mean)
                              : k::scalar::layer_norm(x.data(), y.data(), n, 1e-5f, &mean);
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
  }
  finish(state, n, 2 * n);
}

template <Impl I>
void BM_scale_shift(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);
  auto y = random_vec(n, -1, 1, 1), a = random_vec(n, 0.9f, 0.99f, 2), b = random_vec(n, -1, 1, 3);
  for (auto _ : state) {  // y -> y a + b converges to b / (1 - a)
    if constexpr (I == Impl::simd)
      k::simd::scale_shift(y.data(), a.data(), b.data(), n);
    else
      k::scalar::scale_shift(y.data(), a.data(), b.data(), n);
    benchmark::ClobberMemory();
  }
  finish(state, n, 4 * n);
}

template <Impl I>
void BM_gelu_tanh(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);
  auto x = random_vec(n, -5, 5, 1);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    if constexpr (I == Impl::simd)
      k::simd::gelu_tanh(x.data(), y.data(), n);
    else
      k::scalar::gelu_tanh(x.data(), y.data(), n);
    benchmark::ClobberMemory();
  }
  finish(state, n, 2 * n);
}

template <Impl I>
void BM_softmax(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);
  auto x = random_vec(n, -10, 10, 1);
  for (auto _ : state) {  // in place: later iterations see probabilities (same cost, no subnormals)
    if constexpr (I == Impl::simd)
      k::simd::softmax(x.data(), n);
    else
      k::scalar::softmax(x.data(), n);
    benchmark::ClobberMemory();
  }
  finish(state, n, 2 * n);
}

template <Impl I>
void BM_logsumexp(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);
  auto x = random_vec(n, -10, 10, 1);
  for (auto _ : state) {
    float r = I == Impl::simd ? k::simd::logsumexp(x.data(), n) : k::scalar::logsumexp(x.data(), n);
    benchmark::DoNotOptimize(r);
  }
  finish(state, n, n);
}

template <Impl I, bool Transpose>
void BM_rotary(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);  // one "head" of size dh = n
  auto x = random_vec(n, -1, 1, 1);
  std::vector<float> c(std::size_t(n / 2)), s(std::size_t(n / 2));
  for (std::size_t j = 0; j < c.size(); ++j)
    c[j] = std::cos(0.37f * float(j)), s[j] = std::sin(0.37f * float(j));
  for (auto _ : state) {
    if constexpr (I == Impl::simd) {
      if constexpr (Transpose)
        k::simd::rotary_transpose(x.data(), c.data(), s.data(), n);
      else
        k::simd::rotary(x.data(), c.data(), s.data(), n);
    } else {
      if constexpr (Transpose)
        k::scalar::rotary_transpose(x.data(), c.data(), s.data(), n);
      else
        k::scalar::rotary(x.data(), c.data(), s.data(), n);
    }
    benchmark::ClobberMemory();
  }
  finish(state, n, 3 * n);  // x read + written, cos/sin n/2 each
}

template <Impl I>
void BM_gated_add(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);
  auto x = random_vec(n, -1, 1, 1), g = random_vec(n, -1e-3f, 1e-3f, 2),
       y = random_vec(n, -1, 1, 3);
  for (auto _ : state) {
    if constexpr (I == Impl::simd)
      k::simd::gated_add(x.data(), g.data(), y.data(), n);
    else
      k::scalar::gated_add(x.data(), g.data(), y.data(), n);
    benchmark::ClobberMemory();
  }
  finish(state, n, 4 * n);
}

template <Impl I>
void BM_dot(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);
  auto a = random_vec(n, -1, 1, 1), b = random_vec(n, -1, 1, 2);
  for (auto _ : state) {
    float r = I == Impl::simd ? k::simd::dot(a.data(), b.data(), n)
                              : k::scalar::dot(a.data(), b.data(), n);
    benchmark::DoNotOptimize(r);
  }
  finish(state, n, 2 * n);
}

template <Impl I>
void BM_axpy(benchmark::State& state) {
  const std::ptrdiff_t n = state.range(0);
  auto x = random_vec(n, -1e-3f, 1e-3f, 1), y = random_vec(n, -1, 1, 2);
  float alpha = 0.5f;
  for (auto _ : state) {
    if constexpr (I == Impl::simd)
      k::simd::axpy(alpha, x.data(), y.data(), n);
    else
      k::scalar::axpy(alpha, x.data(), y.data(), n);
    alpha = -alpha;  // y oscillates instead of drifting
    benchmark::ClobberMemory();
  }
  finish(state, n, 3 * n);
}

#define BD3_BENCH_PAIR(fn)                                  \
  BENCHMARK_TEMPLATE(fn, Impl::simd)->Arg(768)->Arg(50258); \
  BENCHMARK_TEMPLATE(fn, Impl::scalar)->Arg(768)->Arg(50258)

BD3_BENCH_PAIR(BM_layer_norm);
BD3_BENCH_PAIR(BM_scale_shift);
BD3_BENCH_PAIR(BM_gelu_tanh);
BD3_BENCH_PAIR(BM_softmax);
BD3_BENCH_PAIR(BM_logsumexp);
BENCHMARK_TEMPLATE(BM_rotary, Impl::simd, false)->Arg(768)->Arg(50258);
BENCHMARK_TEMPLATE(BM_rotary, Impl::scalar, false)->Arg(768)->Arg(50258);
BENCHMARK_TEMPLATE(BM_rotary, Impl::simd, true)->Arg(768)->Arg(50258);
BENCHMARK_TEMPLATE(BM_rotary, Impl::scalar, true)->Arg(768)->Arg(50258);
BD3_BENCH_PAIR(BM_gated_add);
BD3_BENCH_PAIR(BM_dot);
BD3_BENCH_PAIR(BM_axpy);
#undef BD3_BENCH_PAIR

// small_m_bf16: linear_small_m with the weights stored as bfloat16 (half the bytes);
// packed, packed_bf16: linear_packed on W packed (kernels/gemm.hpp), float or bfloat16.
// gemm_nt: the training forward's blocked GEMM (kernels/sgemm.hpp).
enum class Linear { small_m, tiled, eigen, small_m_bf16, packed, packed_bf16, gemm_nt };

template <Linear L>
void BM_linear(benchmark::State& state) {
  const std::ptrdiff_t M = state.range(0), K = state.range(1), N = state.range(2);
  auto x = random_vec(M * K, -1, 1, 1), b = random_vec(N, -1, 1, 3);
  // W as the model holds its weights: on huge pages (without them the hardware prefetcher
  // stops at every 4 KiB page: the small output layer streams at 26 instead of 33 GB/s).
  const auto w = random_vec(N * K, -1, 1, 2);
  const std::vector<float, bd3::detail::HugePageAllocator<float>> W(w.begin(), w.end());
  std::vector<k::bfloat16, bd3::detail::HugePageAllocator<k::bfloat16>> W16;
  if constexpr (L == Linear::small_m_bf16)
    for (float v : w) W16.push_back(k::to_bfloat16(v));
  std::vector<float, bd3::detail::HugePageAllocator<float>> P;
  std::vector<k::bfloat16, bd3::detail::HugePageAllocator<k::bfloat16>> P16;
  if constexpr (L == Linear::packed) {
    P.resize(std::size_t(k::packed_size(N, K)));
    k::pack_weights(W.data(), N, K, P.data());
  } else if constexpr (L == Linear::packed_bf16) {
    P16.resize(std::size_t(k::packed_size(N, K)));
    k::pack_weights(W.data(), N, K, P16.data());
  }
  std::vector<float> y(static_cast<std::size_t>(M * N));
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  for (auto _ : state) {
    if constexpr (L == Linear::small_m) {
      k::simd::linear_small_m<float>(x.data(), M, K, W.data(), b.data(), N, y.data());
    } else if constexpr (L == Linear::small_m_bf16) {
      k::simd::linear_small_m(x.data(), M, K, W16.data(), b.data(), N, y.data());
    } else if constexpr (L == Linear::packed) {
      k::simd::linear_packed(x.data(), M, K, P.data(), b.data(), N, y.data());
    } else if constexpr (L == Linear::packed_bf16) {
      k::simd::linear_packed(x.data(), M, K, P16.data(), b.data(), N, y.data());
    } else if constexpr (L == Linear::tiled) {
      k::simd::linear_tiled<float>(x.data(), M, K, W.data(), b.data(), N, y.data());
    } else if constexpr (L == Linear::gemm_nt) {
      k::simd::gemm_nt(x.data(), M, K, W.data(), b.data(), N, y.data());
    } else {
      Eigen::Map<RowMat> Y(y.data(), M, N);
      Y.noalias() = Eigen::Map<const RowMat>(x.data(), M, K) *
                    Eigen::Map<const RowMat>(W.data(), N, K).transpose();
      Y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(b.data(), N);
    }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPs"] = benchmark::Counter(double(2 * M * K * N) * double(state.iterations()),
                                                benchmark::Counter::kIsRate);
  state.counters["W_GBps"] = benchmark::Counter(
      1e-9 * double((L == Linear::small_m_bf16 || L == Linear::packed_bf16 ? 2 : 4) * K * N) *
          double(state.iterations()),
      benchmark::Counter::kIsRate);
}

void linear_shapes(benchmark::internal::Benchmark* b) {
  for (int M : {4, 8, 16, 32, 64, 128})
    for (auto [K, N] : {std::pair{256, 768}, {256, 1024}, {1024, 256}, {256, 4097}})
      b->Args({M, K, N});
  // The output layer of the `small` preset (154 MB: streamed from memory) at decode sizes.
  for (int M : {1, 2, 4, 8}) b->Args({M, 768, 50258});
}
BENCHMARK_TEMPLATE(BM_linear, Linear::small_m)->Apply(linear_shapes);
BENCHMARK_TEMPLATE(BM_linear, Linear::tiled)->Apply(linear_shapes);
BENCHMARK_TEMPLATE(BM_linear, Linear::eigen)->Apply(linear_shapes);
BENCHMARK_TEMPLATE(BM_linear, Linear::small_m_bf16)->Apply(linear_shapes);
BENCHMARK_TEMPLATE(BM_linear, Linear::packed)->Apply(linear_shapes);
BENCHMARK_TEMPLATE(BM_linear, Linear::packed_bf16)->Apply(linear_shapes);

// One thread's share of the `small` training forward: 1,024 of the 2,048 [xt, x0] rows
// against q/k/v, the attention output, the MLP in and out; 512 of the 1,024 xt rows against
// the output layer.
void forward_shapes(benchmark::internal::Benchmark* b) {
  for (auto [M, K, N] : {std::array<int, 3>{1024, 768, 2304},
                         {1024, 768, 768},
                         {1024, 768, 3072},
                         {1024, 3072, 768},
                         {512, 768, 50258}})
    b->Args({M, K, N});
  b->Unit(benchmark::kMillisecond);
}
BENCHMARK_TEMPLATE(BM_linear, Linear::gemm_nt)->Apply(forward_shapes);
BENCHMARK_TEMPLATE(BM_linear, Linear::eigen)->Apply(forward_shapes);

}  // namespace

BENCHMARK_MAIN();
