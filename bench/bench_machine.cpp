// This machine's ceilings, for judging the kernels and the model against them:
//  * clock: a dependent chain of register-register integer adds (1 cycle latency on any
//    x86-64) -> "GHz";
//  * FMA peak: 12 independent register-resident chains of xsimd::batch<float> FMAs per
//    thread (enough to cover FMA latency x throughput, e.g. 4 cycles x 2 pipes = 8),
//    1 thread and all threads (OpenMP) -> "GFLOPs";
//  * memory bandwidth: read (sum over a 1 GiB float buffer), copy (a = b) and triad
//    (a = b + s c, also with non-temporal stores), 1 and all threads -> "GB/s"
//    (10^9 bytes/s, STREAM counting: bytes the kernel names, no write-allocate traffic);
//  * Eigen SGEMM (C = A B, float, column-major) for square 256/1024/2048 and the
//    transformer shape M=2048, K=768, N=2304, with 1 and 2 threads -> "GFLOPs".
//
// All multi-threaded cases use wall-clock time (UseRealTime); counters are rates over it.
// "cpu_util" = process CPU time / (wall time x threads) over the timed loop: about 1 when
// the benchmark had its cores to itself, lower when other processes shared them.
//   build/release/bench_machine --benchmark_min_time=0.5
#include <benchmark/benchmark.h>
#include <bd3/kernels/simd.hpp>
#include <xsimd/xsimd.hpp>

#include <omp.h>
#include <sys/mman.h>
#include <Eigen/Dense>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <new>
#include <vector>

namespace {

using batch = xsimd::batch<float>;
constexpr std::ptrdiff_t kLanes = static_cast<std::ptrdiff_t>(batch::size);

int all_threads() {
  return std::max(1, omp_get_num_procs());
}

// Thread counts to run: 1 and all (deduplicated on a 1-core machine).
void thread_args(benchmark::internal::Benchmark* b) {
  b->Arg(1);
  if (all_threads() > 1) b->Arg(all_threads());
}

// Process CPU time vs wall time over a timed loop.
struct CpuUtil {
  static double cpu() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  static double wall() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  double cpu0 = cpu(), wall0 = wall();
  double operator()(int threads) const { return (cpu() - cpu0) / ((wall() - wall0) * threads); }
};

// ---------------------------------------------------------------------------------------
// Clock: 32 dependent single-cycle adds per loop trip; the loop counter runs alongside.
// The addend is a register, not an immediate: Intel cores since Golden Cove fold adds of a
// small immediate into the renamer, so an immediate chain has no latency to measure there
// (it reports several times the real clock).

void BM_clock_add_chain(benchmark::State& state) {
  constexpr std::int64_t kTrips = 1 << 22;
  const CpuUtil util;
  for (auto _ : state) {
    std::uint64_t x = 0;
    const std::uint64_t one = 1;
    for (std::int64_t t = 0; t < kTrips; ++t) {
#if defined(__x86_64__)
      asm volatile(
          "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
          "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
          "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
          "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
          "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
          "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
          "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
          "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
          : "+r"(x)
          : "r"(one));
#else
      state.SkipWithError("x86-64 only");
      break;
#endif
    }
    benchmark::DoNotOptimize(x);
  }
  state.counters["cpu_util"] = util(1);
  state.counters["GHz"] = benchmark::Counter(double(state.iterations()) * kTrips * 32 / 1e9,
                                             benchmark::Counter::kIsRate);
}
BENCHMARK(BM_clock_add_chain)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---------------------------------------------------------------------------------------
// FMA peak.

constexpr int kChains = 12;
constexpr std::int64_t kFmaTrips = 1 << 20;
constexpr double kFlopsPerCall = double(kFmaTrips) * kChains * kLanes * 2;

// acc = acc * m + a on kChains independent accumulators; m < 1, so every chain converges
// to a / (1 - m) and stays normal (no overflow, no subnormals).
float fma_chains(float seed, float m_in, float a_in) {
  const batch m(m_in), a(a_in);
  batch acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = batch(seed + 0.01f * float(j));
  for (std::int64_t t = 0; t < kFmaTrips; ++t) {
#pragma GCC unroll 12
    for (int j = 0; j < kChains; ++j) acc[j] = bd3::kernels::simd::fma(acc[j], m, a);
  }
  batch s = acc[0];
  for (int j = 1; j < kChains; ++j) s += acc[j];
  return xsimd::hadd(s);
}

void BM_fma_peak(benchmark::State& state) {
  const int threads = int(state.range(0));
  float m = 0.999999f, a = 1e-6f;
  benchmark::DoNotOptimize(m);
  benchmark::DoNotOptimize(a);
  float sink = 0;
  const CpuUtil util;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += fma_chains(float(omp_get_thread_num()), m, a);
  }
  benchmark::DoNotOptimize(sink);
  state.counters["cpu_util"] = util(threads);
  state.counters["threads"] = threads;
  state.counters["GFLOPs"] = benchmark::Counter(
      double(state.iterations()) * threads * kFlopsPerCall / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_fma_peak)->Apply(thread_args)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---------------------------------------------------------------------------------------
// Memory bandwidth.

constexpr std::size_t kGiB = std::size_t(1) << 30;
constexpr std::ptrdiff_t kFloats = std::ptrdiff_t(kGiB / sizeof(float));  // 1 GiB of float

// A 1 GiB float buffer on 2 MiB-aligned memory (transparent huge pages requested),
// first touched by all threads with the same static partition the kernels use.
struct Buffer {
  float* p = nullptr;
  explicit Buffer(float fill) {
    const std::size_t align = std::size_t(2) << 20;
    p = static_cast<float*>(std::aligned_alloc(align, kGiB));
    if (!p) throw std::bad_alloc();
    madvise(p, kGiB, MADV_HUGEPAGE);
#pragma omp parallel for schedule(static) num_threads(all_threads())
    for (std::ptrdiff_t i = 0; i < kFloats; ++i) p[i] = fill;
  }
  ~Buffer() {
    std::free(p);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};
Buffer& buf_a() {
  static Buffer b(1.f);
  return b;
}
Buffer& buf_b() {
  static Buffer b(2.f);
  return b;
}
Buffer& buf_c() {
  static Buffer b(3.f);
  return b;
}

// [begin, end) of thread t's share of n floats, rounded to whole batches.
std::pair<std::ptrdiff_t, std::ptrdiff_t> share(std::ptrdiff_t n, int t, int threads) {
  const std::ptrdiff_t nb = n / kLanes;
  return {nb * t / threads * kLanes, nb * (t + 1) / threads * kLanes};
}

float read_sum(const float* x, std::ptrdiff_t begin, std::ptrdiff_t end) {
  batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
  std::ptrdiff_t i = begin;
  for (; i + 4 * kLanes <= end; i += 4 * kLanes) {
    s0 += batch::load_aligned(x + i);
    s1 += batch::load_aligned(x + i + kLanes);
    s2 += batch::load_aligned(x + i + 2 * kLanes);
    s3 += batch::load_aligned(x + i + 3 * kLanes);
  }
  for (; i < end; i += kLanes) s0 += batch::load_aligned(x + i);
  return xsimd::hadd((s0 + s1) + (s2 + s3));
}

void BM_mem_read(benchmark::State& state) {
  const int threads = int(state.range(0));
  const float* x = buf_a().p;
  float sink = 0;
  const CpuUtil util;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      auto [b, e] = share(kFloats, omp_get_thread_num(), threads);
      sink += read_sum(x, b, e);
    }
    benchmark::ClobberMemory();
  }
  benchmark::DoNotOptimize(sink);
  state.counters["cpu_util"] = util(threads);
  state.counters["threads"] = threads;
  state.counters["GB/s"] = benchmark::Counter(double(state.iterations()) * double(kGiB) / 1e9,
                                              benchmark::Counter::kIsRate);
}
BENCHMARK(BM_mem_read)->Apply(thread_args)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_mem_copy(benchmark::State& state) {
  const int threads = int(state.range(0));
  float* a = buf_a().p;
  const float* b = buf_b().p;
  const CpuUtil util;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      auto [lo, hi] = share(kFloats, omp_get_thread_num(), threads);
      for (std::ptrdiff_t i = lo; i < hi; i += kLanes)
        batch::load_aligned(b + i).store_aligned(a + i);
    }
    benchmark::ClobberMemory();
  }
  state.counters["cpu_util"] = util(threads);
  state.counters["threads"] = threads;
  state.counters["GB/s"] = benchmark::Counter(double(state.iterations()) * 2 * double(kGiB) / 1e9,
                                              benchmark::Counter::kIsRate);
}
BENCHMARK(BM_mem_copy)->Apply(thread_args)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_mem_triad(benchmark::State& state) {
  const int threads = int(state.range(0));
  float* a = buf_a().p;
  const float* b = buf_b().p;
  const float* c = buf_c().p;
  const batch s(0.5f);
  const CpuUtil util;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      auto [lo, hi] = share(kFloats, omp_get_thread_num(), threads);
      for (std::ptrdiff_t i = lo; i < hi; i += kLanes)
        bd3::kernels::simd::fma(s, batch::load_aligned(c + i), batch::load_aligned(b + i))
            .store_aligned(a + i);
    }
    benchmark::ClobberMemory();
  }
  state.counters["cpu_util"] = util(threads);
  state.counters["threads"] = threads;
  state.counters["GB/s"] = benchmark::Counter(double(state.iterations()) * 3 * double(kGiB) / 1e9,
                                              benchmark::Counter::kIsRate);
}
BENCHMARK(BM_mem_triad)->Apply(thread_args)->UseRealTime()->Unit(benchmark::kMillisecond);

#if defined(__AVX__)
// Triad with non-temporal (streaming) stores: no read-for-ownership of a.
void BM_mem_triad_nt(benchmark::State& state) {
  const int threads = int(state.range(0));
  float* a = buf_a().p;
  const float* b = buf_b().p;
  const float* c = buf_c().p;
  const __m256 s = _mm256_set1_ps(0.5f);
  const CpuUtil util;
  for (auto _ : state) {
#pragma omp parallel num_threads(threads)
    {
      auto [lo, hi] = share(kFloats, omp_get_thread_num(), threads);
      for (std::ptrdiff_t i = lo; i < hi; i += 8)
        _mm256_stream_ps(
            a + i, _mm256_add_ps(_mm256_load_ps(b + i), _mm256_mul_ps(s, _mm256_load_ps(c + i))));
      _mm_sfence();
    }
    benchmark::ClobberMemory();
  }
  state.counters["cpu_util"] = util(threads);
  state.counters["threads"] = threads;
  state.counters["GB/s"] = benchmark::Counter(double(state.iterations()) * 3 * double(kGiB) / 1e9,
                                              benchmark::Counter::kIsRate);
}
BENCHMARK(BM_mem_triad_nt)->Apply(thread_args)->UseRealTime()->Unit(benchmark::kMillisecond);
#endif

// ---------------------------------------------------------------------------------------
// Eigen SGEMM: C (M x N) = A (M x K) * B (K x N).

void BM_eigen_sgemm(benchmark::State& state) {
  const Eigen::Index m = state.range(0), k = state.range(1), n = state.range(2);
  const int threads = int(state.range(3));
  Eigen::setNbThreads(threads);
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(m, k), b = Eigen::MatrixXf::Random(k, n);
  Eigen::MatrixXf c(m, n);
  const CpuUtil util;
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  const double cpu_util = util(threads);
  Eigen::setNbThreads(0);  // back to the default (all OpenMP threads)
  state.counters["cpu_util"] = cpu_util;
  state.counters["threads"] = threads;
  state.counters["GFLOPs"] =
      benchmark::Counter(double(state.iterations()) * 2.0 * double(m) * double(k) * double(n) / 1e9,
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_eigen_sgemm)
    ->ArgNames({"M", "K", "N", "threads"})
    ->ArgsProduct({{256}, {256}, {256}, {1, 2}})
    ->ArgsProduct({{1024}, {1024}, {1024}, {1, 2}})
    ->ArgsProduct({{2048}, {2048}, {2048}, {1, 2}})
    ->ArgsProduct({{2048}, {768}, {2304}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
