#pragma once
// An allocator for the large buffers that every decode call streams from memory (the
// weights). On Linux, blocks of at least 4 MiB are 2 MiB-aligned and advised as
// transparent huge pages (MADV_HUGEPAGE; most distributions enable THP only on request),
// so a pass over the weights takes a TLB miss per 2 MiB instead of per 4 KiB. The advice
// may be ignored by the kernel; smaller blocks, and other systems, use std::allocator.
#include <cstddef>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace bd3::detail {

template <class T>
struct HugePageAllocator {
  using value_type = T;
  static constexpr std::size_t huge_page = std::size_t(2) << 20;
  static constexpr std::size_t min_bytes = std::size_t(4) << 20;

  HugePageAllocator() = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T) - huge_page)
      throw std::bad_array_new_length();
#if defined(__linux__)
    const std::size_t bytes = n * sizeof(T);
    if (bytes >= min_bytes) {
      const std::size_t rounded = (bytes + huge_page - 1) / huge_page * huge_page;
      void* p = std::aligned_alloc(huge_page, rounded);
      if (!p) throw std::bad_alloc();
      (void)madvise(p, rounded, MADV_HUGEPAGE);  // advice: on failure the pages stay 4 KiB
      return static_cast<T*>(p);
    }
#endif
    return std::allocator<T>{}.allocate(n);
  }

  void deallocate(T* p, std::size_t n) noexcept {
#if defined(__linux__)
    if (n * sizeof(T) >= min_bytes) {
      std::free(p);
      return;
    }
#endif
    std::allocator<T>{}.deallocate(p, n);
  }

  friend bool operator==(const HugePageAllocator&, const HugePageAllocator&) {
    return true;
  }
};

}  // namespace bd3::detail
