#pragma once
// The KV cache of the sampler: per layer and sequence, the keys (after rotary, at their
// absolute positions) and values of the committed clean blocks, as a sliding window.
// Layout per layer and sequence: head-major, [n_heads][capacity][head_dim], so that each
// decode call, which reads every head's whole window, reads each head's keys and values
// as two sequential runs (rows with all heads side by side gave 256-byte pieces 3 KB apart
// for `small`: x1.4 slower attention in bench_model BM_DecodeAttention).
// The window holds model_length tokens, the current block included, so at most
// model_length - block_size committed tokens are kept; older blocks drop out. A cached
// block keeps the keys and values it got when it was committed (SPEC "KV cache").
// Sliding: each head's buffer has `slack` rows beyond the window's, and the window moves
// forward in it by a block per commit; only when it reaches the end are its rows copied
// back to the front (one copy of the whole cache every slack / block_size commits, instead
// of one per commit: `small`, 75 MB, ~4 ms per copy). The window stays one contiguous run
// per head, so the attention reads it as before, key by key in order: same numbers.
#include <bd3/detail/huge_pages.hpp>
#include <bd3/error.hpp>
#include <bd3/model/config.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace bd3 {

template <class T>
class KVCache {
 public:
  KVCache() = default;
  KVCache(const ModelConfig& c, int batch) { reset(c, batch); }

  void reset(const ModelConfig& c, int batch) {
    if (batch < 1) fail_usage("KV cache: batch must be >= 1");
    if (c.block_size == 0)
      fail_usage("KV cache: config.block_size is not set (build the cache from model.config())");
    c.validate();
    n_layers_ = c.n_blocks;
    n_heads_ = c.n_heads;
    head_dim_ = c.head_dim();
    window_ = c.model_length;
    block_size_ = c.block_size;
    batch_ = batch;
    length_ = 0;
    start_ = 0;
    next_position_ = 0;
    const size_t n = size_t(n_layers_) * batch_ * n_heads_ * head_stride();
    keys_.assign(n, T(0));
    values_.assign(n, T(0));
  }

  int batch() const { return batch_; }
  int length() const { return length_; }  // committed tokens held
  int window() const { return window_; }
  int block_size() const { return block_size_; }
  int64_t next_position() const { return next_position_; }  // position of the next block's row 0
  int64_t committed_tokens() const { return next_position_; }

  // Rows [0, length) are committed; rows [length, length + 2 block_size) are the scratch
  // space for the block(s) being processed (two for a fused commit). Head h's row i is at
  // keys(layer, b) + h * head_stride() + i * head_dim (row 0: the oldest token held).
  int capacity() const { return window_ + block_size_ + slack(); }  // rows per head
  int64_t head_stride() const { return int64_t(capacity()) * head_dim_; }
  T* keys(int layer, int b) { return buffer(keys_, layer, b) + window_offset(); }
  T* values(int layer, int b) { return buffer(values_, layer, b) + window_offset(); }
  const T* keys(int layer, int b) const { return buffer(keys_, layer, b) + window_offset(); }
  const T* values(int layer, int b) const { return buffer(values_, layer, b) + window_offset(); }

  // Makes the scratch rows (filled by the model for every layer) committed, and slides
  // the window when it is full: its start moves past the dropped rows, and when the next
  // scratch rows would not fit, the rows held move back to the front of each buffer.
  void commit_scratch() {
    length_ += block_size_;
    next_position_ += block_size_;
    const int keep = window_ - block_size_;
    if (length_ <= keep) return;
    start_ += length_ - keep;
    length_ = keep;
    if (start_ + length_ + 2 * block_size_ <= capacity()) return;
    const size_t from = size_t(start_) * head_dim_, n = size_t(length_) * head_dim_;
    for (int l = 0; l < n_layers_; ++l)
      for (int b = 0; b < batch_; ++b)
        for (int h = 0; h < n_heads_; ++h) {
          T* k = buffer(keys_, l, b) + h * head_stride();
          T* v = buffer(values_, l, b) + h * head_stride();
          std::copy(k + from, k + from + n, k);  // (to the left: a forward copy is safe)
          std::copy(v + from, v + from + n, v);
        }
    start_ = 0;
  }

  size_t bytes() const { return (keys_.size() + values_.size()) * sizeof(T); }

 private:
  using Buffer = std::vector<T, detail::HugePageAllocator<T>>;
  T* buffer(Buffer& v, int layer, int b) { return v.data() + offset(layer, b); }
  const T* buffer(const Buffer& v, int layer, int b) const { return v.data() + offset(layer, b); }
  size_t offset(int layer, int b) const {
    return (size_t(layer) * batch_ + b) * n_heads_ * head_stride();
  }
  int64_t window_offset() const { return int64_t(start_) * head_dim_; }
  // Rows per head beyond window + block_size (see the top of the file): a quarter of the
  // window, whole blocks, so the copy back costs 1/64 of one per commit for `small` (window
  // 1024, block 4) for 25 % more memory. None when the block is the whole window (MDLM): no
  // row is ever kept.
  int slack() const {
    return window_ > block_size_ ? std::max(block_size_, (window_ / 4) / block_size_ * block_size_)
                                 : 0;
  }
  int n_layers_ = 0, n_heads_ = 1, head_dim_ = 0, window_ = 0, block_size_ = 1, batch_ = 1;
  int start_ = 0;  // buffer row of the window's row 0
  int length_ = 0;
  int64_t next_position_ = 0;
  // Every decode call reads the whole window: huge pages where the system grants them.
  Buffer keys_, values_;
};

}  // namespace bd3
