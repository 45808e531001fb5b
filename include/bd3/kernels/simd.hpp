#pragma once
// xsimd kernels for float, on xsimd's default architecture at compile time (fma3+avx2,
// 8 lanes, or avx512bw, 16 lanes, on the development machines). Each kernel has a scalar twin with
// the same signature in kernels/scalar.hpp; tests/test_kernels.cpp holds them to each other and to
// the double twin.
//
// Conventions: all loads and stores are unaligned (callers' pointers carry no alignment
// guarantee); the last n % lanes elements run through a scalar tail that evaluates the
// same formula as the vector body. Reductions keep several independent accumulators, so
// their summation order (and last-bit rounding) differs from the scalar twin's.
#include <bd3/kernels/scalar.hpp>

#include <xsimd/xsimd.hpp>

#include <cmath>
#include <cstddef>
#include <type_traits>

namespace bd3::kernels::simd {

// x * y + z rounded once. xsimd 8.1 has no AVX-512 fma: for AVX-512 batches its generic
// fallback is a multiply then an add (two roundings, twice the instructions), which would
// make every kernel's result differ from its std::fma scalar twin's on AVX-512 machines
// only. This calls the AVX-512 instruction there and xsimd::fma everywhere else.
template <class T, class A>
inline xsimd::batch<T, A> fma(const xsimd::batch<T, A>& x, const xsimd::batch<T, A>& y,
                              const xsimd::batch<T, A>& z) {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    if constexpr (std::is_same_v<T, float>) return _mm512_fmadd_ps(x, y, z);
    if constexpr (std::is_same_v<T, double>) return _mm512_fmadd_pd(x, y, z);
  }
#endif
  return xsimd::fma(x, y, z);
}

namespace detail {

using batch = xsimd::batch<float>;
inline constexpr std::ptrdiff_t lanes = static_cast<std::ptrdiff_t>(batch::size);

// n rounded down to a multiple of m (the end of a vector loop; the rest is the tail).
inline constexpr std::ptrdiff_t floor_to(std::ptrdiff_t n, std::ptrdiff_t m) {
  return n - n % m;
}

inline batch load(const float* p) {
  return batch::load_unaligned(p);
}
inline void store(float* p, const batch& v) {
  v.store_unaligned(p);
}

// Largest element of a batch (xsimd 8.1 has no reduce_max).
inline float hmax(const batch& v) {
  alignas(64) float buf[batch::size];
  v.store_aligned(buf);
  float m = buf[0];
  for (std::size_t i = 1; i < batch::size; ++i) m = buf[i] > m ? buf[i] : m;
  return m;
}

inline float max_of(const float* x, std::ptrdiff_t n) {
  std::ptrdiff_t i = 0;
  float m = x[0];
  if (n >= lanes) {
    batch m0 = load(x), m1 = m0;
    i = lanes;
    for (const std::ptrdiff_t stop = lanes + floor_to(n - lanes, 2 * lanes); i < stop;
         i += 2 * lanes) {
      m0 = xsimd::max(m0, load(x + i));
      m1 = xsimd::max(m1, load(x + i + lanes));
    }
    for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
      m0 = xsimd::max(m0, load(x + i));
    m = hmax(xsimd::max(m0, m1));
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

inline float sum_of(const float* x, std::ptrdiff_t n) {
  batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, 4 * lanes); i < stop; i += 4 * lanes) {
    s0 += load(x + i);
    s1 += load(x + i + lanes);
    s2 += load(x + i + 2 * lanes);
    s3 += load(x + i + 3 * lanes);
  }
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes) s0 += load(x + i);
  float s = xsimd::hadd((s0 + s1) + (s2 + s3));
  for (; i < n; ++i) s += x[i];
  return s;
}

// sum_i (x_i - c)^2
inline float sum_sq_dev(const float* x, std::ptrdiff_t n, float c) {
  const batch cv(c);
  batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, 4 * lanes); i < stop; i += 4 * lanes) {
    batch d0 = load(x + i) - cv, d1 = load(x + i + lanes) - cv;
    batch d2 = load(x + i + 2 * lanes) - cv, d3 = load(x + i + 3 * lanes) - cv;
    s0 = simd::fma(d0, d0, s0);
    s1 = simd::fma(d1, d1, s1);
    s2 = simd::fma(d2, d2, s2);
    s3 = simd::fma(d3, d3, s3);
  }
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes) {
    batch d = load(x + i) - cv;
    s0 = simd::fma(d, d, s0);
  }
  float s = xsimd::hadd((s0 + s1) + (s2 + s3));
  for (; i < n; ++i) s += (x[i] - c) * (x[i] - c);
  return s;
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = k (x + 0.044715 x^3). With
// 1 + tanh(u) = 2 / (1 + exp(-2u)) this is x / (1 + exp(t)), t = -2u = x (-2k - 2k c x^2):
// no cancellation near u = 0 or u -> -inf, and for huge |x| t -> -/+inf gives exp 0/inf,
// i.e. x or -0 (never NaN for finite x).
inline constexpr float gelu_m2k = float(-2.0 * 0.7978845608028654);
inline constexpr float gelu_m2kc = float(-2.0 * 0.7978845608028654 * 0.044715);

inline batch gelu_tanh(const batch& x) {
  batch t = x * simd::fma(x * x, batch(gelu_m2kc), batch(gelu_m2k));
  return x / (batch(1.f) + xsimd::exp(t));
}
inline float gelu_tanh(float x) {
  float t = x * std::fma(x * x, gelu_m2kc, gelu_m2k);
  return x / (1.f + std::exp(t));
}

}  // namespace detail

// Layer norm without affine: y = (x - mean) / sqrt(var + eps), two passes over x (mean,
// then the centred sum of squares). Returns rstd; writes the mean through mean_out.
inline float layer_norm(const float* x, float* y, std::ptrdiff_t n, float eps, float* mean_out) {
  using namespace detail;
  const float mean = sum_of(x, n) / float(n);
  const float var = sum_sq_dev(x, n, mean) / float(n);
  const float rstd = 1.f / std::sqrt(var + eps);
  const batch mv(mean), rv(rstd);
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
    store(y + i, (load(x + i) - mv) * rv);
  for (; i < n; ++i) y[i] = (x[i] - mean) * rstd;
  if (mean_out) *mean_out = mean;
  return rstd;
}

// y = y * a + b
inline void scale_shift(float* y, const float* a, const float* b, std::ptrdiff_t n) {
  using namespace detail;
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
    store(y + i, simd::fma(load(y + i), load(a + i), load(b + i)));
  for (; i < n; ++i) y[i] = std::fma(y[i], a[i], b[i]);
}

inline void gelu_tanh(const float* x, float* y, std::ptrdiff_t n) {
  using namespace detail;
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
    store(y + i, detail::gelu_tanh(load(x + i)));
  for (; i < n; ++i) y[i] = detail::gelu_tanh(x[i]);
}

// In-place softmax: max, exp(x - max) with running sum, scale by 1/sum. -inf entries
// give exactly 0.
inline void softmax(float* x, std::ptrdiff_t n) {
  using namespace detail;
  const float m = max_of(x, n);
  const batch mv(m);
  batch s0(0.f), s1(0.f);
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, 2 * lanes); i < stop; i += 2 * lanes) {
    batch e0 = xsimd::exp(load(x + i) - mv), e1 = xsimd::exp(load(x + i + lanes) - mv);
    store(x + i, e0);
    store(x + i + lanes, e1);
    s0 += e0;
    s1 += e1;
  }
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes) {
    batch e = xsimd::exp(load(x + i) - mv);
    store(x + i, e);
    s0 += e;
  }
  float s = xsimd::hadd(s0 + s1);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  const float inv = 1.f / s;
  const batch iv(inv);
  i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
    store(x + i, load(x + i) * iv);
  for (; i < n; ++i) x[i] *= inv;
}

// log(sum(exp(x))) = max + log(sum(exp(x - max))).
inline float logsumexp(const float* x, std::ptrdiff_t n) {
  using namespace detail;
  const float m = max_of(x, n);
  const batch mv(m);
  batch s0(0.f), s1(0.f);
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, 2 * lanes); i < stop; i += 2 * lanes) {
    s0 += xsimd::exp(load(x + i) - mv);
    s1 += xsimd::exp(load(x + i + lanes) - mv);
  }
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
    s0 += xsimd::exp(load(x + i) - mv);
  float s = xsimd::hadd(s0 + s1);
  for (; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

// Rotary (NeoX half-split) on one head of size dh; cos/sin hold dh/2 entries.
inline void rotary(float* x, const float* c, const float* s, std::ptrdiff_t dh) {
  using namespace detail;
  const std::ptrdiff_t h = dh / 2;
  std::ptrdiff_t j = 0;
  for (const std::ptrdiff_t stop = floor_to(h, lanes); j < stop; j += lanes) {
    batch a = load(x + j), b = load(x + j + h), cv = load(c + j), sv = load(s + j);
    store(x + j, simd::fma(a, cv, -(b * sv)));
    store(x + j + h, simd::fma(b, cv, a * sv));
  }
  for (; j < h; ++j) {
    float a = x[j], b = x[j + h];
    x[j] = std::fma(a, c[j], -(b * s[j]));
    x[j + h] = std::fma(b, c[j], a * s[j]);
  }
}

// The transpose of rotary (rotation by -angle).
inline void rotary_transpose(float* x, const float* c, const float* s, std::ptrdiff_t dh) {
  using namespace detail;
  const std::ptrdiff_t h = dh / 2;
  std::ptrdiff_t j = 0;
  for (const std::ptrdiff_t stop = floor_to(h, lanes); j < stop; j += lanes) {
    batch a = load(x + j), b = load(x + j + h), cv = load(c + j), sv = load(s + j);
    store(x + j, simd::fma(a, cv, b * sv));
    store(x + j + h, simd::fma(b, cv, -(a * sv)));
  }
  for (; j < h; ++j) {
    float a = x[j], b = x[j + h];
    x[j] = std::fma(a, c[j], b * s[j]);
    x[j + h] = std::fma(b, c[j], -(a * s[j]));
  }
}

// x += g * y
inline void gated_add(float* x, const float* g, const float* y, std::ptrdiff_t n) {
  using namespace detail;
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
    store(x + i, simd::fma(load(g + i), load(y + i), load(x + i)));
  for (; i < n; ++i) x[i] = std::fma(g[i], y[i], x[i]);
}

inline float dot(const float* a, const float* b, std::ptrdiff_t n) {
  using namespace detail;
  batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, 4 * lanes); i < stop; i += 4 * lanes) {
    s0 = simd::fma(load(a + i), load(b + i), s0);
    s1 = simd::fma(load(a + i + lanes), load(b + i + lanes), s1);
    s2 = simd::fma(load(a + i + 2 * lanes), load(b + i + 2 * lanes), s2);
    s3 = simd::fma(load(a + i + 3 * lanes), load(b + i + 3 * lanes), s3);
  }
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
    s0 = simd::fma(load(a + i), load(b + i), s0);
  float s = xsimd::hadd((s0 + s1) + (s2 + s3));
  for (; i < n; ++i) s = std::fma(a[i], b[i], s);
  return s;
}

// y += alpha * x
inline void axpy(float alpha, const float* x, float* y, std::ptrdiff_t n) {
  using namespace detail;
  const batch av(alpha);
  std::ptrdiff_t i = 0;
  for (const std::ptrdiff_t stop = floor_to(n, lanes); i < stop; i += lanes)
    store(y + i, simd::fma(av, load(x + i), load(y + i)));
  for (; i < n; ++i) y[i] = std::fma(alpha, x[i], y[i]);
}

// Lane c of the result is the sum of the lanes of rows[c] (rows[0 .. lanes)): xsimd's haddp,
// except on AVX-512 with float. There (xsimd 8.1's haddp also swaps lanes 2-3 with 4-5 and
// 10-11 with 12-13) a tree of 512-bit shuffles halves the vector count at each level: 16 -> 8
// adding 256-bit halves, 8 -> 4 adding 128-bit quarters, 4 -> 2 adding 64-bit pairs, 2 -> 1
// adding neighbours; 45 instructions where extracting the halves and two 256-bit haddp took
// about 80 (the decode attention's scores spent as many on these sums as on their FMAs).
// The tree's levels interleave its inputs' lanes; fed the rows in the order `feed`, it puts
// the sum of rows[c] in lane c (test_kernels checks every lane).
template <class T, class A>
xsimd::batch<T, A> lane_sums(const xsimd::batch<T, A>* rows) {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_same_v<T, float> && std::is_base_of_v<xsimd::avx512f, A>) {
    constexpr int feed[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
    __m512 halves[8], quarters[4], pairs[2];
    for (int i = 0; i < 8; ++i) {  // [a lo256 + a hi256, b lo256 + b hi256]
      const __m512 a = rows[feed[i]], b = rows[feed[i + 8]];
      halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int i = 0; i < 4; ++i) {  // quarters: [a q0+q1, a' q0+q1 .. ] per source
      const __m512 a = halves[i], b = halves[i + 4];
      quarters[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    for (int i = 0; i < 2; ++i) {  // in each quarter: 2 lanes of one source, 2 of another
      const __m512d a = _mm512_castps_pd(quarters[i]), b = _mm512_castps_pd(quarters[i + 2]);
      pairs[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                               _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    return _mm512_add_ps(_mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
#endif
  return xsimd::haddp(rows);
}

}  // namespace bd3::kernels::simd
