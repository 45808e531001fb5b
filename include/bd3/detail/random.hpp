#pragma once
// SplitMix64, the one hash behind every counter-based random stream of bd3 (sampling
// streams, dropout masks, corpus shuffles): a bijection on 64 bits with full avalanche,
// so value i of a stream is a pure function of (key, i) on any thread.
#include <cstdint>

namespace bd3::detail {

inline constexpr uint64_t golden_gamma = 0x9e3779b97f4a7c15ull;

// The SplitMix64 finaliser.
constexpr uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// One SplitMix64 step from state z: the finaliser of z + gamma.
constexpr uint64_t splitmix64(uint64_t z) {
  return mix64(z + golden_gamma);
}

}  // namespace bd3::detail
