#pragma once
// A parallel loop over [0, n) for work that streams memory in index order (the tiles of a
// packed decode matrix, kernels/gemm.hpp): one contiguous share per thread, walked forward,
// so each thread reads one sequential stream that the hardware prefetchers follow; a
// thread that runs out takes what is left of the other shares, one index at a time from
// their far ends, so a thread slowed down (a shared machine, its memory) does not keep
// the other waiting at the barrier. OpenMP's guided schedule balances as well but hands
// out shrinking chunks, each a stream restarted at a new address: `small`'s 49 decode
// matrices (4 rows, 2 threads) ran at 0.80-0.83 of the read bandwidth guided and 0.85-0.87
// with shares when the machine read over 42 GB/s, 0.93-0.97 and 0.96-0.98 when it read
// ~30 (docs/performance.md). Every index is claimed exactly once, by one thread, so what a
// loop body computes does not depend on which thread ran it.
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>

#include <bd3/error.hpp>

namespace bd3::detail {

class SplitWithStealing {
 public:
  // [0, n) in `parts` shares (parts >= 1, typically omp_get_max_threads() before the
  // region). A team smaller than `parts` is fine: its threads steal the unowned shares.
  SplitWithStealing(int64_t n, int parts) : parts_(parts) {
    require(parts >= 1 && n >= 0 && n <= int64_t(std::numeric_limits<uint32_t>::max()),
            "SplitWithStealing: needs parts >= 1 and 0 <= n < 2^32");
    shares_ = std::make_unique<Share[]>(size_t(parts));
    for (int p = 0; p < parts; ++p)
      shares_[p].range.store(pack(uint32_t(n * p / parts), uint32_t(n * (p + 1) / parts)),
                             std::memory_order_relaxed);
  }

  // Calls body(i) for indices i of [0, n): the thread's own share in order, then the rest
  // of the others from their ends. Every thread of the team calls it once; when all have
  // returned, every index has been run exactly once. (The claims need no ordering: the
  // region's closing barrier publishes what the bodies wrote.)
  template <class Body>
  void run(int thread, Body&& body) {
    if (thread < parts_)
      for (int64_t i; (i = claim_front(shares_[thread])) >= 0;) body(i);
    for (int o = 1; o <= parts_; ++o) {
      Share& s = shares_[(thread + o) % parts_];
      for (int64_t i; (i = claim_back(s)) >= 0;) body(i);
    }
  }

 private:
  // (end << 32) | next: the unclaimed indices of a share are [next, end).
  struct alignas(64) Share {
    std::atomic<uint64_t> range{0};
  };
  static uint64_t pack(uint32_t next, uint32_t end) { return uint64_t(end) << 32 | next; }

  static int64_t claim_front(Share& s) {
    uint64_t r = s.range.load(std::memory_order_relaxed);
    for (;;) {
      const uint32_t next = uint32_t(r), end = uint32_t(r >> 32);
      if (next >= end) return -1;
      if (s.range.compare_exchange_weak(r, pack(next + 1, end), std::memory_order_relaxed))
        return next;
    }
  }
  static int64_t claim_back(Share& s) {
    uint64_t r = s.range.load(std::memory_order_relaxed);
    for (;;) {
      const uint32_t next = uint32_t(r), end = uint32_t(r >> 32);
      if (next >= end) return -1;
      if (s.range.compare_exchange_weak(r, pack(next, end - 1), std::memory_order_relaxed))
        return end - 1;
    }
  }

  int parts_;
  std::unique_ptr<Share[]> shares_;
};

}  // namespace bd3::detail
