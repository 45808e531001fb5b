#pragma once
// Counter-based random numbers for sampling: value i of a stream is a hash of (key, i),
// so a range of values can be reserved in a fixed order and drawn later on any thread
// with the same result. Each (seed, sequence, attempt) gets its own stream, which makes a
// sequence's tokens independent of the thread count and of the other sequences in its
// batch.
#include <bd3/detail/random.hpp>

#include <cstdint>

namespace bd3::sample {

using bd3::detail::mix64;  // the SplitMix64 finaliser (detail/random.hpp)

class RandomStream {
 public:
  RandomStream() = default;
  explicit RandomStream(uint64_t key) : key_(key) {}

  // The stream of one sequence's attempt under a seed.
  static RandomStream derive(uint64_t seed, uint64_t sequence, uint64_t attempt) {
    uint64_t k = mix64(seed + bd3::detail::golden_gamma);
    k = mix64(k ^ (sequence * 0xd1b54a32d192ed03ULL + 0x8cb92ba72f3d8dd7ULL));
    k = mix64(k ^ (attempt * 0xaf251af3b0f025b5ULL + 0x5851f42d4c957f2dULL));
    return RandomStream(k);
  }

  // Value i: hashing i first keeps streams with nearby keys from overlapping.
  uint64_t at(uint64_t i) const { return mix64(key_ + mix64(i + bd3::detail::golden_gamma)); }
  // Uniform in (0, 1) with 53 random bits; never 0, so -log(u) is finite.
  double uniform_at(uint64_t i) const { return (double(at(i) >> 11) + 0.5) * 0x1.0p-53; }

  double uniform() { return uniform_at(counter_++); }
  // Reserves n values; returns the index of the first.
  uint64_t reserve(uint64_t n) {
    const uint64_t first = counter_;
    counter_ += n;
    return first;
  }
  uint64_t key() const { return key_; }
  uint64_t counter() const { return counter_; }

 private:
  uint64_t key_ = 0;
  uint64_t counter_ = 0;
};

}  // namespace bd3::sample
