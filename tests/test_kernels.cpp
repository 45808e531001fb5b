// The xsimd kernels (kernels/simd.hpp) against their scalar twins (kernels/scalar.hpp):
// the float twin (same inputs, same precision) and the double twin (the same float inputs
// widened, as an accuracy reference), plus the dispatch in kernels/kernels.hpp.
//
// Tolerances, with u = 2^-24 (float unit roundoff):
//  * elementwise kernels (scale_shift, gated_add, axpy, rotary, rotary_transpose):
//      |simd - ref| <= 4u * (sum of |terms|), e.g. 4u(|y a| + |b|) for y a + b; vs both twins.
//  * reductions use the summation depth of the algorithm: D_simd(n) = n/8 + 16 (8 lanes or
//    more sum independently, then a horizontal add and a scalar tail), D_twin(n) = n + 16
//    (the twin's left-to-right loop). Against the double twin the bound uses D_simd;
//    against the float twin D_simd + D_twin (both are within their bound of the exact
//    value):
//      dot:        |s - r| <= u D sum|a_i b_i|
//      logsumexp:  |s - r| <= u (D + 16 + max|x_i - m|) + 4u |r|   (m = max x)
//      softmax:    |p_i - r_i| <= u (D + 24 + |x_i - m| + max|x_j - m|) r_i
//                  (exp(x_i - m) inherits the rounding of x_i - m, relative u |x_i - m|)
//      layer_norm: mean: u D mean|x| + u|mean|; rstd: relative u (D + 16);
//                  y_i: rstd * tol(mean) + |y_i| (tol(rstd) + 4u)
//  * gelu_tanh (x / (1 + exp(-2 v)), v = k (x + 0.044715 x^3)): relative 1e-6 (1 + |v|),
//    the 1 + |v| being the conditioning of the function in the tails; plus the twins' own
//    cancellation in 1 + tanh(v): absolute 1e-15 |x| for the double twin, 3e-7 |x| for the
//    float twin.
#include <bd3/kernels/kernels.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace k = bd3::kernels;

constexpr double u = 0x1p-24;
constexpr double inf = std::numeric_limits<double>::infinity();
constexpr float finf = std::numeric_limits<float>::infinity();
const std::vector<std::ptrdiff_t> kSizes = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 64, 100, 257, 1000};

double depth_simd(std::ptrdiff_t n) {
  return double(n) / 8 + 16;
}
double depth_twin(std::ptrdiff_t n) {
  return double(n) + 16;
}

// A float buffer whose data pointer is deliberately misaligned by one float (4 bytes), so
// the kernels' unaligned loads/stores are exercised.
struct Buf {
  std::vector<float> storage;
  explicit Buf(std::ptrdiff_t n, float fill = 0.f) : storage(std::size_t(n) + 1, fill) {}
  float* data() { return storage.data() + 1; }
  const float* data() const { return storage.data() + 1; }
  float& operator[](std::ptrdiff_t i) { return data()[i]; }
  float operator[](std::ptrdiff_t i) const { return data()[i]; }
  std::ptrdiff_t size() const { return std::ptrdiff_t(storage.size()) - 1; }
};

Buf random_buf(std::mt19937& rng, std::ptrdiff_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  Buf b(n);
  for (std::ptrdiff_t i = 0; i < n; ++i) b[i] = d(rng);
  return b;
}
std::vector<double> widen(const Buf& b) {
  return {b.data(), b.data() + b.size()};
}

// Tracks the largest err / tol over a case; one CHECK per case, with the worst element.
struct Worst {
  double ratio = 0;
  std::string where;
  void add(double got, double ref, double tol, const std::string& what, std::ptrdiff_t i) {
    double r;
    if ((std::isnan(got) && std::isnan(ref)) || got == ref)
      r = 0;  // incl. equal infinities
    else if (std::isnan(got) || std::isnan(ref) || std::isinf(got) || std::isinf(ref))
      r = inf;
    else
      r = tol > 0 ? std::abs(got - ref) / tol : inf;
    if (r > ratio || (r == inf && where.empty())) {
      ratio = r;
      std::ostringstream os;
      os.precision(10);
      os << what << " i=" << i << " got=" << got << " ref=" << ref << " tol=" << tol;
      where = os.str();
    }
  }
};
#define CHECK_WORST(w)       \
  do {                       \
    INFO((w).where);         \
    CHECK((w).ratio <= 1.0); \
  } while (0)

// Exact agreement, NaN-aware, -0 == +0.
bool same(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

// exp(x - m) underflows in float (xsimd flushes below about -87.3, std::exp goes through
// the subnormals to about -103.3); beyond that the rounding of x - m no longer matters and
// an absolute floor of FLT_MIN covers the flushed entries.
constexpr double kExpSpreadCap = 104;
constexpr double kFltMin = 0x1p-126;

}  // namespace

// ---------------------------------------------------------------------------------------
// Elementwise kernels.

TEST_CASE("simd scale_shift, gated_add, axpy match the scalar twins", "[kernels][simd]") {
  for (auto n : kSizes) {
    std::mt19937 rng(1000 + unsigned(n));
    for (float mag : {1.f, 1e18f}) {
      CAPTURE(n, mag);
      const Buf y0 = random_buf(rng, n, -mag, mag), a = random_buf(rng, n, -2, 2),
                b = random_buf(rng, n, -mag, mag);
      // scale_shift
      {
        Buf ys = y0, yf = y0;
        std::vector<double> yd = widen(y0), ad = widen(a), bd = widen(b);
        k::simd::scale_shift(ys.data(), a.data(), b.data(), n);
        k::scalar::scale_shift(yf.data(), a.data(), b.data(), n);
        k::scalar::scale_shift(yd.data(), ad.data(), bd.data(), n);
        Worst wd, wf;
        for (std::ptrdiff_t i = 0; i < n; ++i) {
          double tol = 4 * u * (std::abs(double(y0[i]) * a[i]) + std::abs(b[i]));
          wd.add(ys[i], yd[i], tol, "scale_shift vs double", i);
          wf.add(ys[i], yf[i], tol, "scale_shift vs float", i);
        }
        CHECK_WORST(wd);
        CHECK_WORST(wf);
      }
      // gated_add: x += g * y
      {
        const Buf g = a;
        Buf xs = y0, xf = y0;
        std::vector<double> xd = widen(y0), gd = widen(g), yd = widen(b);
        k::simd::gated_add(xs.data(), g.data(), b.data(), n);
        k::scalar::gated_add(xf.data(), g.data(), b.data(), n);
        k::scalar::gated_add(xd.data(), gd.data(), yd.data(), n);
        Worst wd, wf;
        for (std::ptrdiff_t i = 0; i < n; ++i) {
          double tol = 4 * u * (std::abs(double(y0[i])) + std::abs(double(g[i]) * b[i]));
          wd.add(xs[i], xd[i], tol, "gated_add vs double", i);
          wf.add(xs[i], xf[i], tol, "gated_add vs float", i);
        }
        CHECK_WORST(wd);
        CHECK_WORST(wf);
      }
      // axpy: y += alpha x
      {
        const float alpha = -0.73f;
        Buf ys = y0, yf = y0;
        std::vector<double> yd = widen(y0), xd = widen(b);
        k::simd::axpy(alpha, b.data(), ys.data(), n);
        k::scalar::axpy(alpha, b.data(), yf.data(), n);
        k::scalar::axpy(double(alpha), xd.data(), yd.data(), n);
        Worst wd, wf;
        for (std::ptrdiff_t i = 0; i < n; ++i) {
          double tol = 4 * u * (std::abs(double(y0[i])) + std::abs(double(alpha) * b[i]));
          wd.add(ys[i], yd[i], tol, "axpy vs double", i);
          wf.add(ys[i], yf[i], tol, "axpy vs float", i);
        }
        CHECK_WORST(wd);
        CHECK_WORST(wf);
      }
    }
  }
}

TEST_CASE("simd elementwise kernels on zeros are exact", "[kernels][simd]") {
  for (auto n : kSizes) {
    CAPTURE(n);
    Buf z(n, 0.f), y(n, 0.f), one(n, 1.f);
    k::simd::scale_shift(y.data(), one.data(), z.data(), n);
    k::simd::gated_add(y.data(), one.data(), z.data(), n);
    k::simd::axpy(3.f, one.data(), z.data(), n);  // z = 3
    k::simd::gelu_tanh(y.data(), y.data(), n);    // in place: gelu(0) = 0
    bool ok = true;
    for (std::ptrdiff_t i = 0; i < n; ++i) ok = ok && y[i] == 0.f && z[i] == 3.f;
    CHECK(ok);
  }
}

// ---------------------------------------------------------------------------------------
// gelu_tanh

namespace {
double gelu_v(double x) {
  return 0.7978845608028654 * (x + 0.044715 * x * x * x);
}

void check_gelu(const Buf& x, const std::string& label) {
  const std::ptrdiff_t n = x.size();
  Buf ys(n), yf(n);
  std::vector<double> xd = widen(x), yd(std::size_t(n), 0.0);
  k::simd::gelu_tanh(x.data(), ys.data(), n);
  k::scalar::gelu_tanh(x.data(), yf.data(), n);
  k::scalar::gelu_tanh(xd.data(), yd.data(), n);
  Worst wd, wf;
  bool no_nan = true;
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    double v = std::abs(gelu_v(xd[i]));
    if (!std::isfinite(v)) v = 0;  // |x| so large that only the sign of v matters
    double ax = std::abs(xd[i]);
    if (std::isfinite(xd[i])) no_nan = no_nan && !std::isnan(ys[i]);
    wd.add(ys[i], yd[i], 1e-6 * (1 + v) * std::abs(yd[i]) + 1e-15 * ax, label + " vs double", i);
    wf.add(ys[i], yf[i], 1e-6 * (1 + v) * std::abs(yf[i]) + 3e-7 * ax, label + " vs float", i);
  }
  CHECK(no_nan);
  CHECK_WORST(wd);
  CHECK_WORST(wf);
}
}  // namespace

TEST_CASE("simd gelu_tanh matches the scalar twins", "[kernels][simd][gelu]") {
  for (auto n : kSizes) {
    CAPTURE(n);
    std::mt19937 rng(2000 + unsigned(n));
    check_gelu(random_buf(rng, n, -3, 3), "gelu U(-3,3)");
    check_gelu(random_buf(rng, n, -12, 12), "gelu U(-12,12)");
  }
  // A dense sweep through the whole transition region, including the tails where
  // exp(-2v) over/underflows in float.
  Buf sweep(48001);
  for (std::ptrdiff_t i = 0; i < sweep.size(); ++i)
    sweep[i] = float(-12.0 + 24.0 * double(i) / 48000);
  check_gelu(sweep, "gelu sweep [-12,12]");
}

TEST_CASE("simd gelu_tanh edge values: zeros, tiny, huge, infinities", "[kernels][simd][gelu]") {
  const float big = std::numeric_limits<float>::max();
  const std::vector<float> edge = {0.f,   -0.f,   1e-30f, -1e-30f, 1e-6f, -1e-6f, 10.f,  -10.f,
                                   88.f,  -88.f,  1e4f,   -1e4f,   1e19f, -1e19f, 1e20f, -1e20f,
                                   1e30f, -1e30f, big,    -big,    finf,  5.5f,   -5.5f};
  // Run each value in the vector body and in the scalar tail (n = 8 k + 7).
  for (std::ptrdiff_t n : {std::ptrdiff_t(edge.size()), std::ptrdiff_t(8 * 3 + 7)}) {
    Buf x(n);
    for (std::ptrdiff_t i = 0; i < n; ++i) x[i] = edge[std::size_t(i) % edge.size()];
    check_gelu(x, "gelu edge");
    Buf y(n);
    k::simd::gelu_tanh(x.data(), y.data(), n);
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      CAPTURE(x[i], y[i]);
      if (x[i] >= 1e4f) CHECK(y[i] == x[i]);  // gelu(x) = x for large x (incl. +inf)
      if (x[i] <= -1e4f) CHECK(y[i] == 0.f);  // and 0 (as -0) for large -x
      if (x[i] == 0.f) CHECK(y[i] == 0.f);
      if (std::abs(x[i]) == 1e-30f) CHECK(y[i] == x[i] * 0.5f);
    }
  }
}

TEST_CASE("gelu_tanh_grad matches a central finite difference (double)", "[kernels][gelu]") {
  // f''' is bounded by ~2 on the real line; truncation h^2/6 |f'''| ~ 3e-11, rounding
  // ~ 1e-16 |f| / h ~ 1e-11 (1 + |x|).
  const double h = 1e-5;
  double worst = 0, worst_x = 0;
  for (int i = -1200; i <= 1200; ++i) {
    double x = i / 100.0 + 0.003;
    double fd = (k::scalar::gelu_tanh(x + h) - k::scalar::gelu_tanh(x - h)) / (2 * h);
    double g = k::scalar::gelu_tanh_grad(x);
    double r = std::abs(g - fd) / (1e-9 * (1 + std::abs(x)));
    if (r > worst) worst = r, worst_x = x;
  }
  INFO("worst x=" << worst_x << " err/tol=" << worst);
  CHECK(worst <= 1.0);
  CHECK(k::scalar::gelu_tanh_grad(0.0) == Approx(0.5).margin(1e-15));
  CHECK(k::scalar::gelu_tanh_grad(30.0) == Approx(1.0).margin(1e-15));
  CHECK(k::scalar::gelu_tanh_grad(-30.0) == Approx(0.0).margin(1e-15));
}

// ---------------------------------------------------------------------------------------
// Reductions: dot, logsumexp, softmax, layer_norm

namespace {

// lane_sums on rows of small integers (exact sums, whatever the order of the additions).
template <class T>
void check_lane_sums() {
  using batch = xsimd::batch<T>;
  constexpr int L = int(batch::size);
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> d(-1000, 1000);
  for (int trial = 0; trial < 20; ++trial) {
    batch rows[L];
    std::vector<T> expected(L, T(0));
    for (int c = 0; c < L; ++c) {
      alignas(64) T lanes[L];
      for (int i = 0; i < L; ++i)
        expected[size_t(c)] += lanes[i] = T(trial == 0 ? 100 * c + i : d(rng));
      rows[c] = batch::load_aligned(lanes);
    }
    alignas(64) T got[L];
    k::simd::lane_sums(rows).store_aligned(got);
    for (int c = 0; c < L; ++c) {
      CAPTURE(trial, c, L);
      CHECK(got[c] == expected[size_t(c)]);
    }
  }
}

}  // namespace

// xsimd 8.1's AVX-512 haddp for float puts rows 2-3 and 4-5 (10-11, 12-13) in each other's
// lanes: lane_sums must give every row its own lane on every architecture.
TEST_CASE("simd lane_sums puts the sum of row c in lane c", "[kernels][simd]") {
  check_lane_sums<float>();
  check_lane_sums<double>();
}

TEST_CASE("simd fma rounds once, like std::fma, on every instruction set", "[kernels][simd]") {
  // (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: the product alone rounds (to even) to 1 + 2^-11, so
  // a multiply then an add gives 0 where the fused operation gives 2^-24 (and likewise
  // for double with 2^-27 and 2^-54). xsimd 8.1's AVX-512 fma is the unfused fallback.
  auto check = [](auto one_ulp_scale, int e) {
    using T = decltype(one_ulp_scale);
    using batch = xsimd::batch<T>;
    const T x = T(1) + std::ldexp(T(1), -e), z = -(T(1) + std::ldexp(T(1), -e + 1));
    REQUIRE(std::fma(x, x, z) == std::ldexp(T(1), -2 * e));
    alignas(64) T out[batch::size];
    k::simd::fma(batch(x), batch(x), batch(z)).store_aligned(out);
    for (size_t i = 0; i < batch::size; ++i) CHECK(out[i] == std::ldexp(T(1), -2 * e));
  };
  check(0.0f, 12);
  check(0.0, 27);
}

TEST_CASE("simd dot matches the scalar twins", "[kernels][simd][dot]") {
  for (auto n : kSizes) {
    std::mt19937 rng(3000 + unsigned(n));
    for (float mag : {1.f, 1e15f, 1e-15f}) {
      CAPTURE(n, mag);
      const Buf a = random_buf(rng, n, -mag, mag), b = random_buf(rng, n, -1, 1);
      std::vector<double> ad = widen(a), bd = widen(b);
      double sabs = 0;
      for (std::ptrdiff_t i = 0; i < n; ++i) sabs += std::abs(ad[i] * bd[i]);
      float s = k::simd::dot(a.data(), b.data(), n);
      float f = k::scalar::dot(a.data(), b.data(), n);
      double d = k::scalar::dot(ad.data(), bd.data(), n);
      Worst w;
      w.add(s, d, u * depth_simd(n) * sabs, "dot vs double", 0);
      w.add(s, f, u * (depth_simd(n) + depth_twin(n)) * sabs, "dot vs float", 0);
      CHECK_WORST(w);
    }
    Buf z(n, 0.f);
    CHECK(k::simd::dot(z.data(), z.data(), n) == 0.f);
    Buf ones(n, 1.f);
    CHECK(k::simd::dot(ones.data(), ones.data(), n) == float(n));  // exact: small integers
  }
}

namespace {
// Reference-side quantities for logsumexp / softmax tolerances.
double max_spread(const std::vector<double>& x) {
  double m = *std::max_element(x.begin(), x.end()), s = 0;
  for (double v : x)
    if (v != -inf) s = std::max(s, m - v);
  return s;
}

void check_lse_softmax(const Buf& x, const std::string& label) {
  const std::ptrdiff_t n = x.size();
  std::vector<double> xd = widen(x);
  const double m = *std::max_element(xd.begin(), xd.end());
  const double spread = std::min(max_spread(xd), kExpSpreadCap);
  Worst w;
  {
    float s = k::simd::logsumexp(x.data(), n);
    float f = k::scalar::logsumexp(x.data(), n);
    double d = k::scalar::logsumexp(xd.data(), n);
    w.add(s, d, u * (depth_simd(n) + 16 + spread) + 4 * u * std::abs(d),
          label + " logsumexp vs double", 0);
    w.add(s, f, u * (depth_simd(n) + depth_twin(n) + 32 + 2 * spread) + 8 * u * std::abs(d),
          label + " logsumexp vs float", 0);
  }
  Buf ps = x, pf = x;
  std::vector<double> pd = xd;
  k::simd::softmax(ps.data(), n);
  k::scalar::softmax(pf.data(), n);
  k::scalar::softmax(pd.data(), n);
  bool neg_inf_zero = true;
  double total = 0;
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    double dx = xd[i] == -inf ? 0 : std::min(m - xd[i], kExpSpreadCap);
    w.add(ps[i], pd[i], u * (depth_simd(n) + 24 + dx + spread) * pd[i] + kFltMin,
          label + " softmax vs double", i);
    w.add(ps[i], pf[i],
          u * (depth_simd(n) + depth_twin(n) + 48 + 2 * (dx + spread)) * pd[i] + kFltMin,
          label + " softmax vs float", i);
    if (xd[i] == -inf) neg_inf_zero = neg_inf_zero && ps[i] == 0.f;
    total += ps[i];
  }
  CHECK(neg_inf_zero);
  CHECK(std::abs(total - 1) <= u * (depth_simd(n) + 24 + 2 * spread) + u * double(n));
  CHECK_WORST(w);
}
}  // namespace

TEST_CASE("simd logsumexp and softmax match the scalar twins", "[kernels][simd][softmax]") {
  for (auto n : kSizes) {
    CAPTURE(n);
    std::mt19937 rng(4000 + unsigned(n));
    check_lse_softmax(random_buf(rng, n, -1, 1), "U(-1,1)");
    check_lse_softmax(random_buf(rng, n, -30, 30), "U(-30,30)");
    check_lse_softmax(random_buf(rng, n, 1000, 1010), "U(1000,1010)");
    // -inf entries (masked logits): every third, and all but one.
    Buf masked = random_buf(rng, n, -5, 5);
    for (std::ptrdiff_t i = 0; i < n; i += 3) masked[i] = -finf;
    masked[n - 1] = 0.5f;
    check_lse_softmax(masked, "every third -inf");
    Buf one_left(n, -finf);
    one_left[n / 2] = 3.f;
    check_lse_softmax(one_left, "one finite");
    Buf zeros(n, 0.f);
    check_lse_softmax(zeros, "zeros");
  }
}

TEST_CASE("simd softmax and logsumexp edge values", "[kernels][simd][softmax]") {
  for (auto n : kSizes) {
    CAPTURE(n);
    // Only -inf but one entry: probability exactly 1 there, 0 elsewhere; lse = that entry.
    Buf x(n, -finf);
    x[n - 1] = -7.25f;
    CHECK(k::simd::logsumexp(x.data(), n) == -7.25f);
    k::simd::softmax(x.data(), n);
    bool ok = x[n - 1] == 1.f;
    for (std::ptrdiff_t i = 0; i + 1 < n; ++i) ok = ok && x[i] == 0.f;
    CHECK(ok);
    // Huge magnitudes: entries at 1e30 share the mass, the rest (<= 1e29) underflow to 0.
    std::mt19937 rng(5000 + unsigned(n));
    Buf big = random_buf(rng, n, -1e29f, 1e29f);
    std::ptrdiff_t top = 0;
    for (std::ptrdiff_t i = 0; i < n; i += 5) big[i] = 1e30f, ++top;
    check_lse_softmax(big, "huge");
    CHECK(k::simd::logsumexp(big.data(), n) == 1e30f);
    k::simd::softmax(big.data(), n);
    Worst w;
    for (std::ptrdiff_t i = 0; i < n; ++i)
      w.add(big[i], i % 5 == 0 ? 1.0 / double(top) : 0.0, 4 * u * depth_simd(n) / double(top),
            "huge softmax", i);
    CHECK_WORST(w);
  }
}

TEST_CASE("simd layer_norm matches the scalar twins", "[kernels][simd][layer_norm]") {
  for (auto n : kSizes) {
    std::mt19937 rng(6000 + unsigned(n));
    struct Case {
      float lo, hi;
      float eps;
    };
    for (Case c : {Case{-1, 1, 1e-5f}, Case{2, 4, 1e-5f}, Case{1e4f - 1, 1e4f + 1, 1e-6f},
                   Case{-1e15f, 1e15f, 1e-5f}, Case{-1e-3f, 1e-3f, 1e-5f}}) {
      CAPTURE(n, c.lo, c.hi, c.eps);
      const Buf x = random_buf(rng, n, c.lo, c.hi);
      std::vector<double> xd = widen(x), yd(static_cast<std::size_t>(n));
      Buf ys(n), yf(n);
      float ms = 0, mf = 0;
      double md = 0;
      float rs = k::simd::layer_norm(x.data(), ys.data(), n, c.eps, &ms);
      float rf = k::scalar::layer_norm(x.data(), yf.data(), n, c.eps, &mf);
      double rd = k::scalar::layer_norm(xd.data(), yd.data(), n, double(c.eps), &md);
      double mean_abs = 0;
      for (double v : xd) mean_abs += std::abs(v) / double(n);
      auto tol_mean = [&](double depth) { return u * depth * mean_abs + u * std::abs(md); };
      auto tol_rstd = [&](double depth) { return u * (depth + 16); };  // relative
      const double ds = depth_simd(n), dsf = depth_simd(n) + depth_twin(n);
      Worst w;
      w.add(ms, md, tol_mean(ds), "mean vs double", 0);
      w.add(ms, mf, tol_mean(dsf), "mean vs float", 0);
      // rstd: the variance sums (x - mean)^2 with a perturbed mean; the first-order term
      // vanishes (sum of deviations is 0), leaving (dmean * rstd)^2.
      double dm_rstd = tol_mean(dsf) * rd;
      w.add(rs, rd, (tol_rstd(ds) + dm_rstd * dm_rstd) * rd, "rstd vs double", 0);
      w.add(rs, rf, (tol_rstd(dsf) + dm_rstd * dm_rstd) * rd, "rstd vs float", 0);
      for (std::ptrdiff_t i = 0; i < n; ++i) {
        double ay = std::abs(yd[i]);
        w.add(ys[i], yd[i], rd * tol_mean(ds) + ay * (tol_rstd(ds) + 4 * u), "y vs double", i);
        w.add(ys[i], yf[i], rd * tol_mean(dsf) + ay * (tol_rstd(dsf) + 4 * u), "y vs float", i);
      }
      CHECK_WORST(w);
    }
    // Zeros and constants: mean exact, variance 0, y exactly 0, rstd = 1/sqrt(eps).
    for (float v : {0.f, 5.f, -1024.f, 0x1p60f}) {  // n v and every partial sum exact
      CAPTURE(n, v);
      Buf x(n, v), y(n, 1.f);
      float mean = 1;
      float r = k::simd::layer_norm(x.data(), y.data(), n, 1e-5f, &mean);
      float mean_f = 1;
      Buf yf(n);
      float rf = k::scalar::layer_norm(x.data(), yf.data(), n, 1e-5f, &mean_f);
      CHECK(mean == v);
      CHECK(mean_f == v);
      CHECK(r == rf);
      bool zero = true;
      for (std::ptrdiff_t i = 0; i < n; ++i) zero = zero && y[i] == 0.f;
      CHECK(zero);
      if (v == 0.f) CHECK(r == Approx(1 / std::sqrt(1e-5)).epsilon(1e-6));
    }
    // mean_out may be null.
    Buf x(n, 1.f), y(n);
    CHECK(k::simd::layer_norm(x.data(), y.data(), n, 1e-5f, nullptr) ==
          Approx(1 / std::sqrt(1e-5)).epsilon(1e-6));
  }
}

// ---------------------------------------------------------------------------------------
// Rotary

namespace {
struct Angles {
  Buf c, s;
  std::vector<double> cd, sd;  // the float tables widened (what the double twin sees)
};
Angles angles(std::mt19937& rng, std::ptrdiff_t h) {
  std::uniform_real_distribution<double> d(-300, 300);
  Angles a{Buf(h), Buf(h), {}, {}};
  for (std::ptrdiff_t j = 0; j < h; ++j) {
    double t = d(rng);
    a.c[j] = float(std::cos(t));
    a.s[j] = float(std::sin(t));
  }
  a.cd = widen(a.c);
  a.sd = widen(a.s);
  return a;
}
}  // namespace

TEST_CASE("simd rotary and rotary_transpose match the scalar twins", "[kernels][simd][rotary]") {
  for (auto h : kSizes) {
    for (std::ptrdiff_t dh : {2 * h, 2 * h + 1}) {  // odd dh: the last entry is untouched
      std::mt19937 rng(7000 + unsigned(dh));
      for (float mag : {1.f, 1e18f}) {
        CAPTURE(dh, mag);
        const Angles an = angles(rng, h);
        const Buf x0 = random_buf(rng, dh, -mag, mag);
        for (int transpose = 0; transpose < 2; ++transpose) {
          Buf xs = x0, xf = x0;
          std::vector<double> xd = widen(x0);
          if (transpose) {
            k::simd::rotary_transpose(xs.data(), an.c.data(), an.s.data(), dh);
            k::scalar::rotary_transpose(xf.data(), an.c.data(), an.s.data(), dh);
            k::scalar::rotary_transpose(xd.data(), an.cd.data(), an.sd.data(), dh);
          } else {
            k::simd::rotary(xs.data(), an.c.data(), an.s.data(), dh);
            k::scalar::rotary(xf.data(), an.c.data(), an.s.data(), dh);
            k::scalar::rotary(xd.data(), an.cd.data(), an.sd.data(), dh);
          }
          Worst w;
          const std::string what = transpose ? "rotary_transpose" : "rotary";
          for (std::ptrdiff_t j = 0; j < h; ++j) {
            double a = x0[j], b = x0[j + h];
            double tol = 4 * u *
                         (std::abs(a * an.cd[j]) + std::abs(b * an.sd[j]) + std::abs(b * an.cd[j]) +
                          std::abs(a * an.sd[j]));
            w.add(xs[j], xd[j], tol, what + " vs double", j);
            w.add(xs[j + h], xd[j + h], tol, what + " vs double", j + h);
            w.add(xs[j], xf[j], tol, what + " vs float", j);
            w.add(xs[j + h], xf[j + h], tol, what + " vs float", j + h);
          }
          CHECK_WORST(w);
          if (dh % 2) CHECK(xs[dh - 1] == x0[dh - 1]);
        }
      }
    }
  }
}

TEST_CASE("rotary_transpose inverts rotary", "[kernels][rotary]") {
  for (auto h : kSizes) {
    const std::ptrdiff_t dh = 2 * h;
    CAPTURE(dh);
    std::mt19937 rng(8000 + unsigned(dh));
    const Angles an = angles(rng, h);
    const Buf x0 = random_buf(rng, dh, -1, 1);
    // float (simd): R^T R = (c^2 + s^2) I with c^2 + s^2 = 1 to a few u for the rounded
    // tables, plus two rounded rotations: |x' - x| <= 8u (|a| + |b|).
    Buf x = x0;
    k::simd::rotary(x.data(), an.c.data(), an.s.data(), dh);
    k::simd::rotary_transpose(x.data(), an.c.data(), an.s.data(), dh);
    // double (scalar twin), with exact double cos/sin of the same angles: ~1e-15.
    std::vector<double> xd = widen(x0);
    k::scalar::rotary(xd.data(), an.cd.data(), an.sd.data(), dh);
    k::scalar::rotary_transpose(xd.data(), an.cd.data(), an.sd.data(), dh);
    Worst w;
    for (std::ptrdiff_t j = 0; j < h; ++j) {
      double mag = std::abs(x0[j]) + std::abs(x0[j + h]);
      // the float tables satisfy c^2 + s^2 = 1 only to ~2u, which the double round trip
      // sees as a scale error
      double cs = an.cd[j] * an.cd[j] + an.sd[j] * an.sd[j];
      w.add(x[j], x0[j], 8 * u * mag, "simd round trip", j);
      w.add(x[j + h], x0[j + h], 8 * u * mag, "simd round trip", j + h);
      w.add(xd[j], x0[j] * cs, 1e-15 * mag, "double round trip", j);
      w.add(xd[j + h], x0[j + h] * cs, 1e-15 * mag, "double round trip", j + h);
    }
    CHECK_WORST(w);
  }
}

// ---------------------------------------------------------------------------------------
// Dispatch: float goes to simd::, double to scalar::, bit for bit.

TEST_CASE("kernels:: dispatches float to simd and double to scalar", "[kernels][dispatch]") {
  const std::ptrdiff_t n = 257;
  std::mt19937 rng(9000);
  const Buf x = random_buf(rng, n, -3, 3), a = random_buf(rng, n, -1, 1),
            b = random_buf(rng, n, -1, 1);
  const std::vector<double> xd = widen(x), ad = widen(a), bd = widen(b);

  // float
  {
    Buf y1(n), y2(n);
    float m1 = 0, m2 = 0;
    CHECK(same(k::layer_norm<float>(x.data(), y1.data(), n, 1e-5, &m1),
               k::simd::layer_norm(x.data(), y2.data(), n, 1e-5f, &m2)));
    CHECK(same(m1, m2));
    CHECK(y1.storage == y2.storage);
    Buf s1 = x, s2 = x;
    k::scale_shift<float>(s1.data(), a.data(), b.data(), n);
    k::simd::scale_shift(s2.data(), a.data(), b.data(), n);
    CHECK(s1.storage == s2.storage);
    k::gelu_tanh<float>(x.data(), y1.data(), n);
    k::simd::gelu_tanh(x.data(), y2.data(), n);
    CHECK(y1.storage == y2.storage);
    s1 = x;
    s2 = x;
    k::softmax<float>(s1.data(), n);
    k::simd::softmax(s2.data(), n);
    CHECK(s1.storage == s2.storage);
    CHECK(same(k::logsumexp<float>(x.data(), n), k::simd::logsumexp(x.data(), n)));
    s1 = x;
    s2 = x;
    k::rotary<float>(s1.data(), a.data(), b.data(), 2 * 100);
    k::simd::rotary(s2.data(), a.data(), b.data(), 2 * 100);
    CHECK(s1.storage == s2.storage);
    k::rotary_transpose<float>(s1.data(), a.data(), b.data(), 2 * 100);
    k::simd::rotary_transpose(s2.data(), a.data(), b.data(), 2 * 100);
    CHECK(s1.storage == s2.storage);
    k::gated_add<float>(s1.data(), a.data(), b.data(), n);
    k::simd::gated_add(s2.data(), a.data(), b.data(), n);
    CHECK(s1.storage == s2.storage);
    CHECK(same(k::dot<float>(x.data(), a.data(), n), k::simd::dot(x.data(), a.data(), n)));
    CHECK(same(k::dot(x.data(), a.data(), n), k::simd::dot(x.data(), a.data(), n)));  // deduced
    k::axpy<float>(0.5, x.data(), s1.data(), n);
    k::simd::axpy(0.5f, x.data(), s2.data(), n);
    CHECK(s1.storage == s2.storage);
  }
  // double
  {
    std::vector<double> y1(n), y2(n);
    double m1 = 0, m2 = 0;
    CHECK(same(k::layer_norm<double>(xd.data(), y1.data(), n, 1e-5, &m1),
               k::scalar::layer_norm(xd.data(), y2.data(), n, 1e-5, &m2)));
    CHECK(same(m1, m2));
    CHECK(y1 == y2);
    std::vector<double> s1 = xd, s2 = xd;
    k::scale_shift<double>(s1.data(), ad.data(), bd.data(), n);
    k::scalar::scale_shift(s2.data(), ad.data(), bd.data(), n);
    CHECK(s1 == s2);
    k::gelu_tanh<double>(xd.data(), y1.data(), n);
    k::scalar::gelu_tanh(xd.data(), y2.data(), n);
    CHECK(y1 == y2);
    CHECK(k::gelu_tanh<double>(0.7) == k::scalar::gelu_tanh(0.7));
    s1 = xd;
    s2 = xd;
    k::softmax<double>(s1.data(), n);
    k::scalar::softmax(s2.data(), n);
    CHECK(s1 == s2);
    CHECK(same(k::logsumexp<double>(xd.data(), n), k::scalar::logsumexp(xd.data(), n)));
    s1 = xd;
    s2 = xd;
    k::rotary<double>(s1.data(), ad.data(), bd.data(), 200);
    k::scalar::rotary(s2.data(), ad.data(), bd.data(), 200);
    CHECK(s1 == s2);
    k::rotary_transpose<double>(s1.data(), ad.data(), bd.data(), 200);
    k::scalar::rotary_transpose(s2.data(), ad.data(), bd.data(), 200);
    CHECK(s1 == s2);
    k::gated_add<double>(s1.data(), ad.data(), bd.data(), n);
    k::scalar::gated_add(s2.data(), ad.data(), bd.data(), n);
    CHECK(s1 == s2);
    CHECK(same(k::dot<double>(xd.data(), ad.data(), n), k::scalar::dot(xd.data(), ad.data(), n)));
    k::axpy<double>(0.5, xd.data(), s1.data(), n);
    k::scalar::axpy(0.5, xd.data(), s2.data(), n);
    CHECK(s1 == s2);
  }
}
