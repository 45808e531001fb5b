// The weights' allocator: large blocks are 2 MiB-aligned (the precondition of a huge
// page), every block holds what is written to it, and vectors behave as with
// std::allocator. Whether the kernel grants the huge pages is its choice: not checked.
#include <bd3/detail/huge_pages.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

using bd3::detail::HugePageAllocator;

TEST_CASE("huge-page allocator: aligned large blocks, plain small ones", "[memory]") {
  HugePageAllocator<float> alloc;
  for (std::size_t n : {std::size_t(1), std::size_t(1000), (std::size_t(4) << 20) / sizeof(float),
                        (std::size_t(9) << 20) / sizeof(float) + 3}) {
    INFO("floats " << n);
    float* p = alloc.allocate(n);
    REQUIRE(p != nullptr);
    if (n * sizeof(float) >= HugePageAllocator<float>::min_bytes) {
#if defined(__linux__)
      CHECK(reinterpret_cast<std::uintptr_t>(p) % HugePageAllocator<float>::huge_page == 0);
#endif
    }
    for (std::size_t i = 0; i < n; ++i) p[i] = float(i % 1021);
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += p[i];
    double expect = 0;
    for (std::size_t i = 0; i < n; ++i) expect += double(i % 1021);
    CHECK(sum == expect);
    alloc.deallocate(p, n);
  }
  CHECK_THROWS_AS(alloc.allocate(std::numeric_limits<std::size_t>::max() / 2),
                  std::bad_array_new_length);
}

TEST_CASE("huge-page allocator in a vector: assign, grow, copy", "[memory]") {
  std::vector<double, HugePageAllocator<double>> v;
  v.assign(std::size_t(1) << 20, 1.0);  // 8 MiB: the huge-page path
  std::iota(v.begin(), v.end(), 0.0);
  v.resize(v.size() + 5, -1.0);
  auto copy = v;
  CHECK(copy.size() == (std::size_t(1) << 20) + 5);
  CHECK(copy[12345] == 12345.0);
  CHECK(copy.back() == -1.0);
  copy.shrink_to_fit();
  v.clear();
  v.shrink_to_fit();
  CHECK(copy[(std::size_t(1) << 20) - 1] == double((std::size_t(1) << 20) - 1));
}
