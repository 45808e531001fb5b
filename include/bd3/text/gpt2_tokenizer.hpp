#pragma once
// GPT-2's byte-level BPE tokenizer, loaded from vocab.json + merges.txt or from a
// Hugging Face tokenizer.json describing the same kind of model.
//
// Encoding: the text is cut into pieces by GPT-2's pre-tokenizer (detail/pretokenizer.hpp,
// which also says how invalid UTF-8 is handled), each piece's bytes start as byte tokens,
// and the adjacent pair of lowest merge rank is merged (leftmost first on ties) until no
// pair has a rank. Short pieces use a scan; long ones a heap over a linked list
// (O(n log n)). Pieces' results are cached per encoding thread.
//
// Special tokens (<|endoftext|>, id 50256 in GPT-2, which is both BOS and EOS) are
// produced only when the caller passes allow_special=true; otherwise their text is
// encoded as ordinary text.
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>
#include <bd3/io/json.hpp>
#include <bd3/text/detail/bpe_tables.hpp>
#include <bd3/text/detail/byte_level.hpp>
#include <bd3/text/detail/files.hpp>
#include <bd3/text/detail/pretokenizer.hpp>
#include <bd3/text/detail/utf8.hpp>
#include <bd3/text/streaming.hpp>

#include <omp.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace bd3::text {

inline constexpr std::string_view kEndOfText = "<|endoftext|>";
inline constexpr uint64_t kMaxTokenizerFileBytes = uint64_t{128} << 20;
inline constexpr size_t kMaxVocabSize = size_t{1} << 22;
inline constexpr size_t kMaxTokenBytes = 4096;

namespace detail {

// Everything an encoding thread owns: regex match state, piece cache, scratch arrays.
struct Gpt2EncodeState {
  explicit Gpt2EncodeState(const Pretokenizer& p) : matcher(p) {}
  Pretokenizer::Matcher matcher;
  PieceCache cache;
  std::vector<int32_t> symbols;
  std::vector<uint32_t> ranks;
  std::vector<uint32_t> next, prev;
  std::vector<uint64_t> heap;
};

// The immutable model shared by copies of a Gpt2Tokenizer.
class Gpt2Model {
 public:
  // token_bytes[id] are the raw bytes of each token; special[id] marks special tokens
  // (matched literally, never produced by merges); merges are (left, right) id pairs in
  // rank order. Throws bd3::Error naming what is inconsistent; `source` prefixes messages.
  Gpt2Model(std::vector<std::string> token_bytes, std::vector<uint8_t> special,
            std::vector<std::pair<int32_t, int32_t>> merges, const std::string& source)
      : special_(std::move(special)), merges_(std::move(merges)) {
    const size_t n = token_bytes.size();
    if (n == 0) fail(source + ": the vocabulary is empty");
    if (n > kMaxVocabSize)
      fail(source + ": vocabulary of " + std::to_string(n) + " tokens exceeds the limit of " +
           std::to_string(kMaxVocabSize));
    if (special_.size() != n) fail(source + ": special flags do not match the vocabulary");
    offsets_.reserve(n + 1);
    offsets_.push_back(0);
    for (size_t id = 0; id < n; ++id) {
      const std::string& t = token_bytes[id];
      if (t.empty()) fail(source + ": token " + std::to_string(id) + " is empty");
      if (t.size() > kMaxTokenBytes)
        fail(source + ": token " + std::to_string(id) + " is longer than " +
             std::to_string(kMaxTokenBytes) + " bytes");
      if (special_[id] && !is_valid_utf8(t))
        fail(source + ": special token " + std::to_string(id) + " is not valid UTF-8");
      data_ += t;
      offsets_.push_back(static_cast<uint32_t>(data_.size()));
    }
    by_bytes_.reserve(n);
    for (size_t id = 0; id < n; ++id) {
      std::string_view t = token(static_cast<int32_t>(id));
      if (special_[id]) {
        specials_.emplace_back(std::string(t), static_cast<int32_t>(id));
        if (t == kEndOfText) end_of_text_ = static_cast<int32_t>(id);
        continue;
      }
      auto [it, added] = by_bytes_.emplace(t, static_cast<int32_t>(id));
      if (!added)
        fail(source + ": tokens " + std::to_string(it->second) + " and " + std::to_string(id) +
             " have the same bytes " + quote(t));
    }
    if (end_of_text_ < 0) fail(source + ": the vocabulary has no " + std::string(kEndOfText));
    // Longest first, so that at one position the longest special token wins.
    std::stable_sort(specials_.begin(), specials_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    for (int b = 0; b < 256; ++b) {
      auto it = by_bytes_.find(std::string_view(std::string(1, static_cast<char>(b))));
      if (it == by_bytes_.end()) {
        static constexpr char kHex[] = "0123456789abcdef";
        fail(source + ": the vocabulary has no token for byte 0x" + kHex[b >> 4] + kHex[b & 15]);
      }
      byte_id_[b] = it->second;
    }
    if (merges_.size() >= kNoRank) fail(source + ": too many merges");
    table_.reserve(merges_.size());
    for (size_t r = 0; r < merges_.size(); ++r) {
      auto [a, b] = merges_[r];
      const auto where = [&] { return source + ": merge " + std::to_string(r); };
      if (a < 0 || b < 0 || size_t(a) >= n || size_t(b) >= n)
        fail(where() + " refers to a token id out of range");
      if (special_[a] || special_[b]) fail(where() + " uses a special token");
      std::string joined = std::string(token(a)) + std::string(token(b));
      auto it = by_bytes_.find(std::string_view(joined));
      if (it == by_bytes_.end())
        fail(where() + " (" + quote(token(a)) + " + " + quote(token(b)) +
             ") makes a token that is not in the vocabulary");
      if (!table_.insert(a, b, static_cast<uint32_t>(r), it->second))
        fail(where() + " repeats an earlier merge (" + quote(token(a)) + " + " + quote(token(b)) +
             ")");
    }
    Hasher h;
    h.add("gpt2-bpe").add_u64(n).add_u64(merges_.size());
    for (size_t id = 0; id < n; ++id) h.add(token(static_cast<int32_t>(id))).add_u64(special_[id]);
    for (auto [a, b] : merges_) h.add_u64((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
    fingerprint_ = "gpt2-bpe-" + std::to_string(n) + "-" + h.hex();
  }

  // by_bytes_ points into data_: never copied or moved.
  Gpt2Model(const Gpt2Model&) = delete;
  Gpt2Model& operator=(const Gpt2Model&) = delete;

  int32_t vocab_size() const { return static_cast<int32_t>(offsets_.size() - 1); }
  int32_t end_of_text() const { return end_of_text_; }
  std::string_view token(int32_t id) const {
    return std::string_view(data_).substr(offsets_[id], offsets_[id + 1] - offsets_[id]);
  }
  bool is_special(int32_t id) const { return special_[id] != 0; }
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }
  const std::string& fingerprint() const { return fingerprint_; }
  const std::vector<std::pair<std::string, int32_t>>& specials() const { return specials_; }
  std::optional<int32_t> find(std::string_view bytes) const {
    auto it = by_bytes_.find(bytes);
    if (it != by_bytes_.end()) return it->second;
    for (auto& [content, id] : specials_)
      if (content == bytes) return id;
    return std::nullopt;
  }

  void encode_into(std::string_view text, bool allow_special, Gpt2EncodeState& st,
                   std::vector<int32_t>& out) const {
    if (!allow_special || specials_.empty()) {
      encode_ordinary(text, st, out);
      return;
    }
    // Next occurrence of each special token, searched again only once passed.
    std::vector<size_t> next(specials_.size(), 0);
    std::vector<uint8_t> searched(specials_.size(), 0);
    size_t pos = 0;
    while (pos < text.size()) {
      size_t best = std::string_view::npos, which = 0;
      for (size_t k = 0; k < specials_.size(); ++k) {
        if (!searched[k] || (next[k] != std::string_view::npos && next[k] < pos)) {
          next[k] = text.find(specials_[k].first, pos);
          searched[k] = 1;
        }
        if (next[k] < best) {
          best = next[k];
          which = k;
        }
      }
      if (best == std::string_view::npos) break;
      encode_ordinary(text.substr(pos, best - pos), st, out);
      out.push_back(specials_[which].second);
      pos = best + specials_[which].first.size();
    }
    encode_ordinary(text.substr(pos), st, out);
  }

 private:
  static constexpr size_t kSmallPiece = 64;
  static constexpr size_t kHugePiece = size_t{1} << 16;

  void encode_ordinary(std::string_view text, Gpt2EncodeState& st,
                       std::vector<int32_t>& out) const {
    gpt2_pretokenizer().for_each_piece(text, st.matcher, [&](std::string_view piece) {
      if (piece.size() == 1) {
        out.push_back(byte_id_[static_cast<unsigned char>(piece[0])]);
        return;
      }
      if (st.cache.lookup(piece, out)) return;
      const size_t before = out.size();
      if (piece.size() <= kSmallPiece)
        merge_small(piece, st, out);
      else if (piece.size() < kHugePiece || !merge_huge(piece, out))
        merge_large(piece, st, out);
      st.cache.store(piece, out.data() + before, out.size() - before);
    });
  }

  // Quadratic in the piece length, but with no allocation and a tiny constant.
  void merge_small(std::string_view piece, Gpt2EncodeState& st, std::vector<int32_t>& out) const {
    auto& sym = st.symbols;
    auto& rank = st.ranks;
    size_t len = piece.size();
    sym.resize(len);
    rank.resize(len);
    for (size_t i = 0; i < len; ++i) sym[i] = byte_id_[static_cast<unsigned char>(piece[i])];
    for (size_t i = 0; i + 1 < len; ++i) rank[i] = table_.rank(sym[i], sym[i + 1]);
    while (len > 1) {
      size_t best = 0;
      uint32_t best_rank = kNoRank;
      for (size_t i = 0; i + 1 < len; ++i)
        if (rank[i] < best_rank) {
          best_rank = rank[i];
          best = i;
        }
      if (best_rank == kNoRank) break;
      sym[best] = table_.find(sym[best], sym[best + 1])->merged;
      for (size_t i = best + 1; i + 1 < len; ++i) {
        sym[i] = sym[i + 1];
        rank[i] = rank[i + 1];
      }
      --len;
      rank[best] = best + 1 < len ? table_.rank(sym[best], sym[best + 1]) : kNoRank;
      if (best > 0) rank[best - 1] = table_.rank(sym[best - 1], sym[best]);
    }
    out.insert(out.end(), sym.begin(), sym.begin() + static_cast<ptrdiff_t>(len));
  }

  // Merges the symbol at i of the linked list (sym, next, prev; merged-away symbols are -1)
  // with the next one when that pair still has rank r; false for a stale entry.
  bool merge_at(uint32_t i, uint32_t r, std::vector<int32_t>& sym, std::vector<uint32_t>& next,
                std::vector<uint32_t>& prev) const {
    const uint32_t n = static_cast<uint32_t>(sym.size());
    if (sym[i] < 0 || next[i] >= n) return false;
    const uint32_t j = next[i];
    const MergeTable::Entry* e = table_.find(sym[i], sym[j]);
    if (e == nullptr || e->rank != r) return false;
    sym[i] = e->merged;
    sym[j] = -1;
    next[i] = next[j];
    if (next[i] < n) prev[next[i]] = i;
    return true;
  }

  // Heap of (rank, position) over a doubly linked list of symbols: O(n log n) for any
  // piece, e.g. megabytes of spaces. Stale heap entries are skipped when popped: an
  // entry is current when its position is alive and its pair still has that rank.
  void merge_large(std::string_view piece, Gpt2EncodeState& st, std::vector<int32_t>& out) const {
    const uint32_t n = static_cast<uint32_t>(piece.size());
    auto& sym = st.symbols;
    auto& next = st.next;
    auto& prev = st.prev;
    auto& heap = st.heap;
    sym.resize(n);
    next.resize(n);
    prev.resize(n);
    heap.clear();
    for (uint32_t i = 0; i < n; ++i) {
      sym[i] = byte_id_[static_cast<unsigned char>(piece[i])];
      next[i] = i + 1;
      prev[i] = i - 1;  // wraps for i == 0: "no previous"
    }
    auto push = [&](uint32_t i) {
      const uint32_t r = table_.rank(sym[i], sym[next[i]]);
      if (r != kNoRank) {
        heap.push_back((uint64_t(r) << 32) | i);
        std::push_heap(heap.begin(), heap.end(), std::greater<>());
      }
    };
    for (uint32_t i = 0; i + 1 < n; ++i) {
      const uint32_t r = table_.rank(sym[i], sym[i + 1]);
      if (r != kNoRank) heap.push_back((uint64_t(r) << 32) | i);
    }
    std::make_heap(heap.begin(), heap.end(), std::greater<>());
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>());
      const uint64_t top = heap.back();
      heap.pop_back();
      const uint32_t i = static_cast<uint32_t>(top), r = static_cast<uint32_t>(top >> 32);
      if (!merge_at(i, r, sym, next, prev)) continue;
      if (prev[i] < n) push(prev[i]);
      if (next[i] < n) push(i);
    }
    for (uint32_t i = 0; i < n; i = next[i]) out.push_back(sym[i]);
  }

  // The same merges as merge_large for a huge piece (a megabyte-long word), without the
  // heap's cache misses: one bucket of positions per rank, processed in rank order, each
  // left to right, which is the heap's (rank, position) order as long as every pair a
  // merge creates ranks after the merge itself (true of trained BPE tables, where a token
  // only joins merges learned after it). Returns false, having output nothing, when a
  // table breaks that order; merge_large then does the piece.
  bool merge_huge(std::string_view piece, std::vector<int32_t>& out) const {
    const uint32_t n = static_cast<uint32_t>(piece.size());
    std::vector<int32_t> sym(n);
    std::vector<uint32_t> next(n), prev(n);
    struct Bucket {
      std::vector<uint32_t> pos;
      bool sorted = true;
    };
    std::vector<Bucket> buckets(merges_.size());
    auto push = [&](uint32_t i, uint32_t r) {
      Bucket& b = buckets[r];
      if (!b.pos.empty() && i < b.pos.back()) b.sorted = false;
      b.pos.push_back(i);
    };
    for (uint32_t i = 0; i < n; ++i) {
      sym[i] = byte_id_[static_cast<unsigned char>(piece[i])];
      next[i] = i + 1;
      prev[i] = i - 1;  // wraps for i == 0: "no previous"
    }
    for (uint32_t i = 0; i + 1 < n; ++i) {
      const uint32_t r = table_.rank(sym[i], sym[i + 1]);
      if (r != kNoRank) push(i, r);
    }
    for (uint32_t cur = 0; cur < buckets.size(); ++cur) {
      Bucket& b = buckets[cur];
      if (b.pos.empty()) continue;
      if (!b.sorted) std::sort(b.pos.begin(), b.pos.end());
      for (uint32_t i : b.pos) {
        if (!merge_at(i, cur, sym, next, prev)) continue;
        for (uint32_t k : {prev[i], i}) {
          if (k >= n || next[k] >= n) continue;
          const uint32_t r = table_.rank(sym[k], sym[next[k]]);
          if (r == kNoRank) continue;
          if (r <= cur) return false;  // out of order: leave it to the heap
          push(k, r);
        }
      }
      std::vector<uint32_t>().swap(b.pos);
    }
    for (uint32_t i = 0; i < n; i = next[i]) out.push_back(sym[i]);
    return true;
  }

  std::string data_;
  std::vector<uint32_t> offsets_;
  std::vector<uint8_t> special_;
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::vector<std::pair<std::string, int32_t>> specials_;
  std::unordered_map<std::string_view, int32_t> by_bytes_;  // views into data_
  std::array<int32_t, 256> byte_id_{};
  MergeTable table_;
  int32_t end_of_text_ = -1;
  std::string fingerprint_;
};

// Reads vocab.json ({"token": id, ...}) with a SAX parser, so that a token given twice
// is reported instead of silently dropped.
class VocabJsonReader : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit VocabJsonReader(std::string source) : source_(std::move(source)) {}

  std::vector<std::string> tokens;  // by id, as written in the file
  std::string error;

  bool null() override { return bad_value("null"); }
  bool boolean(bool) override { return bad_value("a boolean"); }
  bool number_integer(number_integer_t v) override {
    if (v < 0) return set_error("token " + quote(key_) + " has a negative id " + std::to_string(v));
    return number_unsigned(static_cast<number_unsigned_t>(v));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (depth_ != 1) return bad_value("a number");
    if (v >= kMaxVocabSize)
      return set_error("token " + quote(key_) + " has id " + std::to_string(v) +
                       ", beyond the limit of " + std::to_string(kMaxVocabSize) + " tokens");
    entries_.emplace_back(std::move(key_), static_cast<int32_t>(v));
    return true;
  }
  bool number_float(number_float_t, const string_t&) override { return bad_value("a fraction"); }
  bool string(string_t&) override { return bad_value("a string"); }
  bool binary(binary_t&) override { return bad_value("binary data"); }
  bool start_object(std::size_t) override {
    if (depth_ != 0) return bad_value("an object");
    depth_ = 1;
    return true;
  }
  bool key(string_t& k) override {
    if (entries_.size() >= kMaxVocabSize)
      return set_error("more than " + std::to_string(kMaxVocabSize) + " tokens");
    if (k.size() > 2 * kMaxTokenBytes)
      return set_error("token " + quote(k) + " is too long (" + std::to_string(k.size()) +
                       " bytes)");
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    depth_ = 2;  // done; anything after it is a JSON syntax error
    return true;
  }
  bool start_array(std::size_t) override {
    return depth_ == 0 ? set_error("expected an object {\"token\": id, ...}, got an array")
                       : bad_value("an array");
  }
  bool end_array() override { return false; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    return set_error(std::string("malformed JSON: ") + e.what());
  }

  // Checks the ids form 0..n-1 with no gaps or repeats and fills `tokens`.
  void finish() {
    if (depth_ != 2) fail(source_ + ": expected an object {\"token\": id, ...}");
    const size_t n = entries_.size();
    std::vector<int64_t> owner(n, -1);
    for (size_t e = 0; e < n; ++e) {
      const int32_t id = entries_[e].second;
      if (static_cast<size_t>(id) >= n)
        fail(source_ + ": token " + quote(entries_[e].first) + " has id " + std::to_string(id) +
             ", out of range for a vocabulary of " + std::to_string(n) + " tokens");
      if (owner[id] >= 0)
        fail(source_ + ": id " + std::to_string(id) + " is given to both " +
             quote(entries_[owner[id]].first) + " and " + quote(entries_[e].first));
      owner[id] = static_cast<int64_t>(e);
    }
    std::unordered_map<std::string_view, size_t> seen;
    seen.reserve(n);
    for (size_t e = 0; e < n; ++e)
      if (!seen.emplace(entries_[e].first, e).second)
        fail(source_ + ": token " + quote(entries_[e].first) + " appears twice");
    tokens.resize(n);
    for (size_t id = 0; id < n; ++id) tokens[id] = std::move(entries_[owner[id]].first);
  }

 private:
  bool set_error(const std::string& message) {
    if (error.empty()) error = message;
    return false;
  }
  bool bad_value(const std::string& what) {
    if (depth_ == 0) return set_error("expected an object {\"token\": id, ...}, got " + what);
    return set_error("token " + quote(key_) + " has " + what + " instead of an integer id");
  }

  std::string source_;
  std::string key_;
  int depth_ = 0;
  std::vector<std::pair<std::string, int32_t>> entries_;
};

struct MergeText {
  std::string left, right;
  size_t place = 0;  // line of merges.txt or index in tokenizer.json's model.merges
};

// Where a merge came from, for messages: prefix + place + suffix ("merges.txt line 7",
// "tokenizer.json: model.merges[6]"). Built only when a message is, not once per merge.
struct MergePlace {
  std::string prefix;
  const char* suffix = "";
  std::string operator()(size_t place) const { return prefix + std::to_string(place) + suffix; }
};

// Turns vocabulary strings (byte-level text; special tokens literal) and merges given as
// strings into a model.
inline std::shared_ptr<const Gpt2Model> build_from_strings(const std::vector<std::string>& strings,
                                                           std::vector<uint8_t> special,
                                                           const std::vector<MergeText>& merges,
                                                           const MergePlace& where,
                                                           const std::string& source) {
  std::vector<std::string> bytes(strings.size());
  for (size_t id = 0; id < strings.size(); ++id) {
    if (special[id]) {
      bytes[id] = strings[id];
    } else if (!from_byte_level(strings[id], bytes[id])) {
      fail(source + ": token " + quote(strings[id]) + " (id " + std::to_string(id) +
           ") has a character outside GPT-2's byte alphabet");
    }
  }
  std::unordered_map<std::string_view, int32_t> ids;
  ids.reserve(strings.size());
  for (size_t id = 0; id < strings.size(); ++id) ids.emplace(strings[id], static_cast<int32_t>(id));
  std::vector<std::pair<int32_t, int32_t>> pairs;
  pairs.reserve(merges.size());
  std::string joined;
  for (const MergeText& m : merges) {
    auto a = ids.find(m.left), b = ids.find(m.right);
    if (a == ids.end()) fail(where(m.place) + ": unknown token " + quote(m.left));
    if (b == ids.end()) fail(where(m.place) + ": unknown token " + quote(m.right));
    joined = m.left + m.right;
    if (ids.find(std::string_view(joined)) == ids.end())
      fail(where(m.place) + ": the merged token " + quote(joined) + " is not in the vocabulary");
    pairs.emplace_back(a->second, b->second);
  }
  return std::make_shared<const Gpt2Model>(std::move(bytes), std::move(special), std::move(pairs),
                                           source);
}

inline std::vector<MergeText> parse_merges_txt(std::string_view text, const std::string& source) {
  std::vector<MergeText> merges;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    if (line_no == 1 && line.starts_with("#version")) continue;
    const auto where = [&] { return source + " line " + std::to_string(line_no); };
    if (line.size() > 4 * kMaxTokenBytes) fail(where() + ": line too long");
    const size_t space = line.find(' ');
    if (space == 0 || space == std::string_view::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos)
      fail(where() + ": expected two tokens separated by one space, got " + quote(line));
    if (merges.size() >= kMaxVocabSize)
      fail(source + ": more than " + std::to_string(kMaxVocabSize) + " merges");
    merges.push_back(MergeText{std::string(line.substr(0, space)),
                               std::string(line.substr(space + 1)), line_no});
  }
  return merges;
}

}  // namespace detail

class Gpt2Tokenizer {
 public:
  using StreamDecoder = StreamingDecoder<Gpt2Tokenizer>;

  // vocab.json + merges.txt (GPT-2's files, or those written by save() / the trainer).
  static Gpt2Tokenizer from_files(const std::filesystem::path& vocab_json,
                                  const std::filesystem::path& merges_txt) {
    std::string vocab = detail::read_file(vocab_json, kMaxTokenizerFileBytes, "vocabulary");
    std::string merges = detail::read_file(merges_txt, kMaxTokenizerFileBytes, "merges file");
    return from_strings(vocab, merges, vocab_json.string(), merges_txt.string());
  }

  static Gpt2Tokenizer from_strings(std::string_view vocab_json, std::string_view merges_txt,
                                    const std::string& vocab_name = "vocab.json",
                                    const std::string& merges_name = "merges.txt") {
    if (merges_txt.size() > kMaxTokenizerFileBytes) fail(merges_name + " is too large");
    return from_vocab_tokens(read_vocab_json(vocab_json, vocab_name), merges_txt, vocab_name,
                             merges_name);
  }

  // The tokens of a vocab.json by id, as written in the file (GPT-2's byte-level text).
  static std::vector<std::string> read_vocab_json(std::string_view vocab_json,
                                                  const std::string& vocab_name = "vocab.json") {
    if (vocab_json.size() > kMaxTokenizerFileBytes) fail(vocab_name + " is too large");
    detail::VocabJsonReader reader(vocab_name);
    const bool ok = nlohmann::json::sax_parse(vocab_json.begin(), vocab_json.end(), &reader);
    if (!ok || !reader.error.empty())
      fail(vocab_name + ": " + (reader.error.empty() ? "malformed JSON" : reader.error));
    reader.finish();
    return std::move(reader.tokens);
  }

  // A vocabulary from read_vocab_json with a merges.txt: several merge tables over one
  // vocabulary without reading it again.
  static Gpt2Tokenizer from_vocab_tokens(const std::vector<std::string>& vocab,
                                         std::string_view merges_txt,
                                         const std::string& vocab_name = "vocab.json",
                                         const std::string& merges_name = "merges.txt") {
    if (merges_txt.size() > kMaxTokenizerFileBytes) fail(merges_name + " is too large");
    std::vector<uint8_t> special(vocab.size(), 0);
    for (size_t id = 0; id < vocab.size(); ++id) special[id] = vocab[id] == kEndOfText;
    const auto merges = detail::parse_merges_txt(merges_txt, merges_name);
    return Gpt2Tokenizer(detail::build_from_strings(vocab, std::move(special), merges,
                                                    {merges_name + " line "}, vocab_name));
  }

  // A Hugging Face tokenizer.json of a byte-level BPE model: model.vocab, model.merges
  // (each "a b" or ["a", "b"]) and added_tokens. Added tokens are special tokens here:
  // matched only with allow_special, decoded as their literal content.
  static Gpt2Tokenizer from_tokenizer_json(const std::filesystem::path& path) {
    return from_tokenizer_json_string(
        detail::read_file(path, kMaxTokenizerFileBytes, "tokenizer file"), path.string());
  }

  static Gpt2Tokenizer from_tokenizer_json_string(std::string_view text,
                                                  const std::string& source = "tokenizer.json") {
    using nlohmann::json;
    if (text.size() > kMaxTokenizerFileBytes) fail(source + " is too large");
    io::check_json_depth(text, source);
    json root;
    try {
      root = json::parse(text.begin(), text.end());
    } catch (const json::exception& e) {
      fail(source + ": malformed JSON: " + e.what());
    }
    if (!root.is_object()) fail(source + ": expected a JSON object");
    auto model = root.find("model");
    if (model == root.end() || !model->is_object()) fail(source + ": no \"model\" object");
    if (auto type = model->find("type"); type != model->end() && *type != "BPE")
      fail(source + ": model.type is " + type->dump() + ", expected \"BPE\"");
    if (auto pre = root.find("pre_tokenizer"); pre != root.end() && pre->is_object()) {
      auto aps = pre->find("add_prefix_space");
      if (aps != pre->end() && aps->is_boolean() && aps->get<bool>())
        fail(source + ": add_prefix_space=true is not supported");
    }
    auto vocab = model->find("vocab");
    if (vocab == model->end() || !vocab->is_object())
      fail(source + ": model.vocab is missing or not an object");
    if (vocab->size() > kMaxVocabSize) fail(source + ": model.vocab has too many tokens");

    // id -> string; specials come from added_tokens (and may extend the id range).
    std::vector<std::pair<std::string, int64_t>> entries;
    for (auto& [token, id] : vocab->items()) {
      if (!id.is_number_integer())
        fail(source + ": model.vocab token " + detail::quote(token) + " has a non-integer id");
      entries.emplace_back(token, id.get<int64_t>());
    }
    std::vector<std::pair<std::string, int64_t>> added;
    if (auto at = root.find("added_tokens"); at != root.end() && !at->is_null()) {
      if (!at->is_array()) fail(source + ": added_tokens is not an array");
      for (auto& t : *at) {
        if (!t.is_object() || !t.contains("id") || !t.contains("content") ||
            !t["id"].is_number_integer() || !t["content"].is_string())
          fail(source + ": an added token lacks an integer \"id\" or a string \"content\"");
        added.emplace_back(t["content"].get<std::string>(), t["id"].get<int64_t>());
      }
    }
    const size_t total_max = entries.size() + added.size();
    std::vector<std::string> strings;
    std::vector<int8_t> state;  // -1 unset, 0 ordinary, 1 special
    auto place = [&](const std::string& token, int64_t id, bool is_special) {
      if (id < 0 || static_cast<size_t>(id) >= total_max)
        fail(source + ": token " + detail::quote(token) + " has id " + std::to_string(id) +
             ", out of range");
      if (static_cast<size_t>(id) >= strings.size()) {
        strings.resize(id + 1);
        state.resize(id + 1, -1);
      }
      if (state[id] >= 0) {
        if (is_special && strings[id] == token) {  // an added token that is also in vocab
          state[id] = 1;
          return;
        }
        fail(source + ": id " + std::to_string(id) + " is given to both " +
             detail::quote(strings[id]) + " and " + detail::quote(token));
      }
      strings[id] = token;
      state[id] = is_special ? 1 : 0;
    };
    for (auto& [token, id] : entries) place(token, id, false);
    for (auto& [token, id] : added) place(token, id, true);
    std::vector<uint8_t> special(strings.size());
    for (size_t id = 0; id < strings.size(); ++id) {
      if (state[id] < 0) fail(source + ": no token has id " + std::to_string(id));
      special[id] = state[id] == 1 || strings[id] == kEndOfText;
    }

    std::vector<detail::MergeText> merges;
    auto mj = model->find("merges");
    if (mj != model->end() && !mj->is_null()) {
      if (!mj->is_array()) fail(source + ": model.merges is not an array");
      size_t index = 0;
      for (auto& m : *mj) {
        const size_t place = index++;
        const auto where = [&] { return source + ": model.merges[" + std::to_string(place) + "]"; };
        if (m.is_string()) {
          auto s = m.get<std::string>();
          const size_t space = s.find(' ');
          if (space == 0 || space == std::string::npos || space + 1 == s.size() ||
              s.find(' ', space + 1) != std::string::npos)
            fail(where() + ": expected two tokens separated by one space");
          merges.push_back({s.substr(0, space), s.substr(space + 1), place});
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
          merges.push_back({m[0].get<std::string>(), m[1].get<std::string>(), place});
        } else {
          fail(where() + ": expected \"a b\" or [\"a\", \"b\"]");
        }
      }
    }
    return Gpt2Tokenizer(detail::build_from_strings(strings, std::move(special), merges,
                                                    {source + ": model.merges[", "]"}, source));
  }

  // From raw token bytes (by id), special flags and merges as id pairs in rank order.
  static Gpt2Tokenizer from_parts(std::vector<std::string> token_bytes,
                                  std::vector<uint8_t> special,
                                  std::vector<std::pair<int32_t, int32_t>> merges) {
    return Gpt2Tokenizer(std::make_shared<const detail::Gpt2Model>(
        std::move(token_bytes), std::move(special), std::move(merges), "BPE tokenizer"));
  }

  int32_t vocab_size() const { return m_->vocab_size(); }
  int32_t end_of_text_id() const { return m_->end_of_text(); }
  int32_t bos_id() const { return m_->end_of_text(); }  // GPT-2: BOS = EOS = <|endoftext|>
  int32_t eos_id() const { return m_->end_of_text(); }
  bool is_special(int32_t id) const { return valid(id) && m_->is_special(id); }
  // The token's bytes; bd3::Error for an id out of range.
  std::string_view token_bytes(int32_t id) const {
    check(id);
    return m_->token(id);
  }
  std::optional<int32_t> token_id(std::string_view bytes) const { return m_->find(bytes); }
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return m_->merges(); }
  // Identifies the vocabulary and merges (a hash); equal for equal tokenizers.
  const std::string& fingerprint() const { return m_->fingerprint(); }

  std::vector<int32_t> encode(std::string_view bytes, bool allow_special = false) const {
    detail::Gpt2EncodeState state(detail::gpt2_pretokenizer());
    std::vector<int32_t> out;
    out.reserve(bytes.size() / 4 + 16);
    m_->encode_into(bytes, allow_special, state, out);
    return out;
  }

  // Encodes many texts on `threads` threads (0: OpenMP's default), one result per text.
  std::vector<std::vector<int32_t>> encode_batch(std::span<const std::string_view> texts,
                                                 bool allow_special = false,
                                                 int threads = 0) const {
    std::vector<std::vector<int32_t>> out(texts.size());
    const int nt = std::max(1, threads > 0 ? threads : omp_get_max_threads());
    std::vector<std::unique_ptr<detail::Gpt2EncodeState>> states(nt);
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    const int64_t count = static_cast<int64_t>(texts.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (count > 1)
    for (int64_t i = 0; i < count; ++i) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        auto& state = states[omp_get_thread_num()];
        if (!state) state = std::make_unique<detail::Gpt2EncodeState>(detail::gpt2_pretokenizer());
        out[i].reserve(texts[i].size() / 4 + 16);
        m_->encode_into(texts[i], allow_special, *state, out[i]);
      } catch (...) {
#pragma omp critical(bd3_text_encode_error)
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
    if (error) std::rethrow_exception(error);
    return out;
  }

  // Same ids as encode(), computed on several threads: the text is cut at newlines where
  // the pre-tokenizer restarts identically (detail::split_at_safe_boundaries).
  std::vector<int32_t> encode_parallel(std::string_view bytes, bool allow_special = false,
                                       int threads = 0) const {
    const int nt = std::max(1, threads > 0 ? threads : omp_get_max_threads());
    bool special_with_newline = false;
    for (auto& [content, id] : m_->specials())
      special_with_newline |= content.find('\n') != std::string::npos;
    if (nt == 1 || bytes.size() < (size_t{1} << 18) || (allow_special && special_with_newline))
      return encode(bytes, allow_special);
    const size_t target =
        std::clamp(bytes.size() / (size_t(nt) * 8), size_t{1} << 16, size_t{4} << 20);
    auto chunks = detail::split_at_safe_boundaries(bytes, target);
    auto parts = encode_batch(chunks, allow_special, nt);
    size_t total = 0;
    for (auto& p : parts) total += p.size();
    std::vector<int32_t> out;
    out.reserve(total);
    for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  }

  // Appends the bytes of token `id`; bd3::Error naming the id when it is out of range.
  void append_token_bytes(int32_t id, std::string& out) const {
    check(id);
    out += m_->token(id);
  }

  std::string decode(std::span<const int32_t> ids) const {
    size_t size = 0;
    for (int32_t id : ids) {
      check(id);
      size += m_->token(id).size();
    }
    std::string out;
    out.reserve(size);
    for (int32_t id : ids) out += m_->token(id);
    return out;
  }

  StreamDecoder stream_decoder() const {
    return StreamDecoder(*this);
  }

  // GPT-2's file formats: vocab.json in id order, merges.txt with a "#version" line.
  std::string vocab_json() const {
    std::string out = "{";
    for (int32_t id = 0; id < vocab_size(); ++id) {
      std::string_view t = m_->token(id);
      std::string text = m_->is_special(id) ? std::string(t) : detail::to_byte_level(t);
      if (id > 0) out += ", ";
      out += nlohmann::json(text).dump(-1, ' ', true);
      out += ": " + std::to_string(id);
    }
    return out + "}";
  }

  std::string merges_txt() const {
    std::string out = "#version: 0.2\n";
    for (auto [a, b] : m_->merges()) {
      out += detail::to_byte_level(m_->token(a));
      out += ' ';
      out += detail::to_byte_level(m_->token(b));
      out += '\n';
    }
    return out;
  }

  // True when vocab.json + merges.txt describe this tokenizer exactly. They cannot mark
  // special tokens: on reading, only <|endoftext|> is special, so a tokenizer.json with
  // other added tokens (or <|endoftext|> twice) needs tokenizer_json().
  bool fits_gpt2_files() const {
    const auto& specials = m_->specials();
    return specials.size() == 1 && specials[0].first == kEndOfText;
  }

  // A complete Hugging Face tokenizer.json of this byte-level BPE, as the GPT-2 files on
  // the Hub have it: model (BPE: vocab, merges as pairs), pre_tokenizer, decoder and
  // post_processor (ByteLevel: GPT-2's regex, no prefix space, no BOS/EOS added), special
  // tokens in added_tokens. Hugging Face's clients encode and decode with it as this class
  // does (tests/hf/run.sh), and from_tokenizer_json_string reads it back exactly.
  std::string tokenizer_json() const {
    nlohmann::ordered_json vocab = nlohmann::ordered_json::object(),
                           added = nlohmann::ordered_json::array();
    for (int32_t id = 0; id < vocab_size(); ++id) {
      std::string_view t = m_->token(id);
      if (m_->is_special(id))
        added.push_back({{"id", id},
                         {"content", std::string(t)},
                         {"single_word", false},
                         {"lstrip", false},
                         {"rstrip", false},
                         {"normalized", false},
                         {"special", true}});
      else
        vocab[detail::to_byte_level(t)] = id;
    }
    nlohmann::ordered_json merges = nlohmann::ordered_json::array();
    for (auto [a, b] : m_->merges())
      merges.push_back({detail::to_byte_level(m_->token(a)), detail::to_byte_level(m_->token(b))});
    auto byte_level = [](bool add_prefix_space, bool trim_offsets) {
      return nlohmann::ordered_json{{"type", "ByteLevel"},
                                    {"add_prefix_space", add_prefix_space},
                                    {"trim_offsets", trim_offsets},
                                    {"use_regex", true}};
    };
    nlohmann::ordered_json root;
    root["version"] = "1.0";
    root["truncation"] = nullptr;
    root["padding"] = nullptr;
    root["added_tokens"] = std::move(added);
    root["normalizer"] = nullptr;
    root["pre_tokenizer"] = byte_level(false, true);
    root["post_processor"] = byte_level(false, false);
    root["decoder"] = byte_level(false, true);
    root["model"] = {{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", nullptr},
                     {"continuing_subword_prefix", ""},
                     {"end_of_word_suffix", ""},
                     {"fuse_unk", false},
                     {"byte_fallback", false},
                     {"ignore_merges", false},
                     {"vocab", std::move(vocab)},
                     {"merges", std::move(merges)}};
    return root.dump(1, ' ', true) + "\n";
  }

  // special_tokens_map.json: <|endoftext|> is BOS, EOS and UNK, as in GPT-2's.
  std::string special_tokens_map_json() const {
    const std::string eot(m_->token(m_->end_of_text()));
    const nlohmann::ordered_json j = {{"bos_token", eot}, {"eos_token", eot}, {"unk_token", eot}};
    return j.dump(2, ' ', true) + "\n";
  }

  // tokenizer_config.json: what transformers' AutoTokenizer needs besides tokenizer.json.
  // No BOS added when encoding (bd3 adds it itself) and no clean-up of spaces when
  // decoding, so that decode(encode(text)) == text there as here.
  std::string tokenizer_config_json() const {
    const std::string eot(m_->token(m_->end_of_text()));
    nlohmann::ordered_json added = nlohmann::ordered_json::object();
    for (const auto& [content, id] : m_->specials())
      added[std::to_string(id)] = {{"content", content},   {"lstrip", false},
                                   {"normalized", false},  {"rstrip", false},
                                   {"single_word", false}, {"special", true}};
    const nlohmann::ordered_json j = {{"add_bos_token", false},
                                      {"add_prefix_space", false},
                                      {"added_tokens_decoder", std::move(added)},
                                      {"bos_token", eot},
                                      {"clean_up_tokenization_spaces", false},
                                      {"eos_token", eot},
                                      {"errors", "replace"},
                                      {"tokenizer_class", "GPT2Tokenizer"},
                                      {"unk_token", eot}};
    return j.dump(2, ' ', true) + "\n";
  }

  // Writes, each atomically, into dir (created if needed): vocab.json and merges.txt
  // (GPT-2's files; omitted when they cannot describe the special tokens, fits_gpt2_files)
  // and the Hugging Face files tokenizer.json, tokenizer_config.json,
  // special_tokens_map.json.
  void save(const std::filesystem::path& dir) const {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) fail_io("cannot create directory " + dir.string() + ": " + ec.message());
    const bool gpt2_files = fits_gpt2_files();
    // Tokenizer::load_from prefers vocab.json + merges.txt: old ones would win.
    if (!gpt2_files && (std::filesystem::exists(dir / "vocab.json") ||
                        std::filesystem::exists(dir / "merges.txt")))
      fail(dir.string() + " already holds vocab.json or merges.txt, which cannot describe " +
           "this tokenizer's special tokens (it is saved as tokenizer.json)");
    // tokenizer.json first: a crash between files leaves, at worst, a complete
    // tokenizer.json with no vocab.json (load_from then reads tokenizer.json).
    io::write_file_atomic(dir / "tokenizer.json", tokenizer_json());
    io::write_file_atomic(dir / "tokenizer_config.json", tokenizer_config_json());
    io::write_file_atomic(dir / "special_tokens_map.json", special_tokens_map_json());
    if (gpt2_files) {
      io::write_file_atomic(dir / "vocab.json", vocab_json());
      io::write_file_atomic(dir / "merges.txt", merges_txt());
    }
  }

 private:
  explicit Gpt2Tokenizer(std::shared_ptr<const detail::Gpt2Model> m) : m_(std::move(m)) {}

  bool valid(int32_t id) const {
    return id >= 0 && id < m_->vocab_size();
  }
  void check(int32_t id) const {
    if (!valid(id))
      fail("token id " + std::to_string(id) + " is out of range (vocabulary size " +
           std::to_string(m_->vocab_size()) + ")");
  }

  std::shared_ptr<const detail::Gpt2Model> m_;
};

}  // namespace bd3::text
