#pragma once
// Lookup tables of the BPE encoder: the merge table keyed by a pair of token ids, and
// the bounded cache of encoded pieces.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bd3::text::detail {

inline constexpr uint32_t kNoRank = 0xFFFFFFFFu;

// (left id, right id) -> (rank, merged id). Open addressing with linear probing: the
// lookup in the inner merge loop is one multiply and usually one cache line.
class MergeTable {
 public:
  struct Entry {
    uint64_t key;
    uint32_t rank;
    int32_t merged;
  };

  void reserve(size_t count) {
    size_t capacity = 16;
    int bits = 4;
    while (capacity < 2 * count + 2) {
      capacity <<= 1;
      ++bits;
    }
    slots_.assign(capacity, Entry{kEmpty, kNoRank, -1});
    mask_ = capacity - 1;
    shift_ = 64 - bits;
  }

  // Returns false (and changes nothing) when the pair is already present.
  bool insert(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
    const uint64_t key = make_key(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return false;
      if (slots_[i].key == kEmpty) {
        slots_[i] = Entry{key, rank, merged};
        return true;
      }
    }
  }

  const Entry* find(int32_t left, int32_t right) const {
    const uint64_t key = make_key(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }

  uint32_t rank(int32_t left, int32_t right) const {
    const Entry* e = find(left, right);
    return e != nullptr ? e->rank : kNoRank;
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are non-negative: never a key
  static uint64_t make_key(int32_t left, int32_t right) {
    return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  }
  size_t slot(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }

  std::vector<Entry> slots_ = std::vector<Entry>(1, Entry{kEmpty, kNoRank, -1});
  size_t mask_ = 0;
  int shift_ = 63;
};

// Piece -> its token ids, for one encoding thread. Bounded: when it holds too many
// entries or ids it is emptied and refills with what the text repeats (natural text
// repeats a few tens of thousands of words, so this is rare).
class PieceCache {
 public:
  static constexpr size_t kMaxEntries = size_t{1} << 17;
  static constexpr size_t kMaxIds = size_t{1} << 21;
  static constexpr size_t kMaxPieceBytes = 128;  // longer pieces rarely repeat

  // Appends the cached ids of piece to out; false when absent.
  bool lookup(std::string_view piece, std::vector<int32_t>& out) const {
    auto it = map_.find(piece);
    if (it == map_.end()) return false;
    const int32_t* ids = pool_.data() + it->second.first;
    out.insert(out.end(), ids, ids + it->second.second);
    return true;
  }

  void store(std::string_view piece, const int32_t* ids, size_t count) {
    if (piece.size() > kMaxPieceBytes) return;
    if (map_.size() >= kMaxEntries || pool_.size() + count > kMaxIds) {
      map_.clear();
      pool_.clear();
    }
    map_.emplace(std::string(piece),
                 std::pair<uint32_t, uint32_t>(uint32_t(pool_.size()), uint32_t(count)));
    pool_.insert(pool_.end(), ids, ids + count);
  }

  size_t size() const { return map_.size(); }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, Hash, std::equal_to<>> map_;
  std::vector<int32_t> pool_;
};

}  // namespace bd3::text::detail
