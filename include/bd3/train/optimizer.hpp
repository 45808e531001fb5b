#pragma once
// AdamW, the learning-rate schedule, gradient-norm clipping and the EMA of the weights,
// on flat buffers with the parameter layout (ParameterLayout).
//
// As the official code (diffusion.py configure_optimizers): one torch.optim.AdamW over
// every parameter (no parameter groups: weight decay, 0 by default there, applies to all
// tensors alike), lr 3e-4, betas (0.9, 0.999), eps 1e-8; gradient clipping at norm 1.0;
// EMA 0.9999 with the reference's warm-up of the decay, min(decay, (1+n)/(10+n)) at the
// n-th update (models/ema.py). The update is torch's:
//   p <- p (1 - lr wd);  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
//   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Every element is updated independently, so the result does not depend on the thread
// count.
#include <bd3/error.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <string>
#include <vector>

namespace bd3::train {

struct AdamWOptions {
  double lr = 3e-4;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;

  void validate() const {
    if (!(lr >= 0.0 && std::isfinite(lr))) fail_usage("learning rate must be >= 0");
    if (!(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0))
      fail_usage("AdamW betas must be in [0, 1)");
    if (!(eps > 0.0)) fail_usage("AdamW eps must be > 0");
    if (!(weight_decay >= 0.0 && std::isfinite(weight_decay)))
      fail_usage("weight decay must be >= 0");
  }
};

// Moments in flat float buffers; `step` counts the updates done.
struct AdamWState {
  std::vector<float> m, v;
  int64_t step = 0;
  void reset(size_t n) {
    m.assign(n, 0.0f);
    v.assign(n, 0.0f);
    step = 0;
  }
};

// One AdamW update of params with gradient grad at learning rate lr.
inline void adamw_step(std::span<float> params, std::span<const float> grad, AdamWState& s,
                       const AdamWOptions& o, double lr) {
  const size_t n = params.size();
  if (grad.size() != n || s.m.size() != n || s.v.size() != n)
    fail("adamw_step: buffer sizes differ");
  s.step += 1;
  const double bc1 = 1.0 - std::pow(o.beta1, double(s.step));
  const double bc2 = 1.0 - std::pow(o.beta2, double(s.step));
  const float decay = float(1.0 - lr * o.weight_decay);
  const float b1 = float(o.beta1), b2 = float(o.beta2);
  const float one_b1 = float(1.0 - o.beta1), one_b2 = float(1.0 - o.beta2);
  const float step_size = float(lr / bc1);
  const float bc2_sqrt = float(std::sqrt(bc2));
  const float eps = float(o.eps);
  float* p = params.data();
  const float* g = grad.data();
  float* m = s.m.data();
  float* v = s.v.data();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < int64_t(n); ++i) {
    if (o.weight_decay != 0.0) p[i] *= decay;
    m[i] = b1 * m[i] + one_b1 * g[i];
    v[i] = b2 * v[i] + one_b2 * g[i] * g[i];
    const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

// ---- Learning-rate schedule ----------------------------------------------------------

enum class LrShape { constant, cosine };

struct LrSchedule {
  double lr = 3e-4;    // peak
  int64_t warmup = 0;  // linear warmup steps
  LrShape shape = LrShape::constant;
  int64_t total_steps = 0;  // horizon of the cosine decay
  double min_lr = 0.0;      // cosine floor
  // Counts the warmup as the official code's LambdaLR does (constant_schedule_with_warmup):
  // step / warmup * lr, so step 0 runs at lr 0 (its AdamW update moves the moments, not the
  // weights). Off: (step + 1) / warmup * lr, so no step is spent at lr 0.
  bool warmup_from_zero = false;

  // The learning rate of optimizer step `step` (0-based): the linear warmup, then lr
  // (constant) or the cosine from lr down to min_lr reached at total_steps.
  double at(int64_t step) const {
    if (step < warmup) return lr * double(warmup_from_zero ? step : step + 1) / double(warmup);
    if (shape == LrShape::constant) return lr;
    const int64_t span = std::max<int64_t>(1, total_steps - warmup);
    const double progress = std::clamp(double(step - warmup) / double(span), 0.0, 1.0);
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  }
  std::string shape_name() const { return shape == LrShape::constant ? "constant" : "cosine"; }
};

// ---- Gradient clipping ---------------------------------------------------------------

// L2 norm of the gradient, summed in double in a fixed order (thread-count independent).
inline double gradient_norm(std::span<const float> grad) {
  constexpr size_t chunk = 4096;
  const size_t n = grad.size(), chunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(chunks, 0.0);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t c = 0; c < int64_t(chunks); ++c) {
    double s = 0;
    const size_t end = std::min(n, size_t(c + 1) * chunk);
    for (size_t i = size_t(c) * chunk; i < end; ++i) s += double(grad[i]) * double(grad[i]);
    partial[size_t(c)] = s;
  }
  double total = 0;
  for (double s : partial) total += s;
  return std::sqrt(total);
}

// The scaling step of clip_gradient, for a caller that already has the (finite) norm.
inline void scale_gradient_to_norm(std::span<float> grad, double max_norm, double norm) {
  if (max_norm > 0.0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      const float c = float(coef);
      for (auto& g : grad) g *= c;
    }
  }
}

// Scales grad so that its norm is at most max_norm (torch.nn.utils.clip_grad_norm_:
// coefficient max_norm / (norm + 1e-6), applied only when below 1). Returns the norm
// before clipping. max_norm <= 0 disables clipping.
inline double clip_gradient(std::span<float> grad, double max_norm) {
  const double norm = gradient_norm(grad);
  if (!std::isfinite(norm))
    throw Error(ErrorKind::numerical, "gradient norm is not finite (" + std::to_string(norm) + ")");
  scale_gradient_to_norm(grad, max_norm, norm);
  return norm;
}

// The index of the first NaN or infinity in `values`, or -1 when every value is finite.
// Checked every training step over all the weights, so the scan is an integer test of the
// exponent bits (all ones: NaN or infinity) that the compiler vectorizes.
inline int64_t first_non_finite(std::span<const float> values) {
  constexpr size_t chunk = 4096;
  for (size_t lo = 0; lo < values.size(); lo += chunk) {
    const size_t hi = std::min(values.size(), lo + chunk);
    uint32_t any = 0;
    for (size_t i = lo; i < hi; ++i)
      any |= uint32_t((std::bit_cast<uint32_t>(values[i]) & 0x7f800000u) == 0x7f800000u);
    if (any)
      for (size_t i = lo; i < hi; ++i)
        if (!std::isfinite(values[i])) return int64_t(i);
  }
  return -1;
}

// ---- EMA of the weights ----------------------------------------------------------------

struct Ema {
  double decay = 0.9999;  // 0 disables
  int64_t updates = 0;
  std::vector<float> shadow;

  bool enabled() const { return decay > 0.0; }
  void reset(std::span<const float> params) {
    shadow.assign(params.begin(), params.end());
    updates = 0;
  }
  // The decay used at the next update: min(decay, (1 + n) / (10 + n)), n = updates + 1.
  double next_decay() const {
    const double n = double(updates + 1);
    return std::min(decay, (1.0 + n) / (10.0 + n));
  }
  void update(std::span<const float> params) {
    if (!enabled()) return;
    if (shadow.size() != params.size()) fail("Ema::update: size differs from the parameters");
    const float one_minus = float(1.0 - next_decay());
    ++updates;
    float* s = shadow.data();
    const float* p = params.data();
    const int64_t n = int64_t(params.size());
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) s[i] -= one_minus * (s[i] - p[i]);
  }
};

}  // namespace bd3::train
