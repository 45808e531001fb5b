#pragma once
// Byte-level BPE training in GPT-2's style. The text is cut into pieces by GPT-2's
// pre-tokenizer (the same one the encoder uses), the pieces are counted, and the most
// frequent adjacent pair of tokens is merged again and again. Pair counts are updated
// incrementally (only the words that hold the merged pair are touched) and the best pair
// comes from a max-heap with lazily discarded stale entries. Ties go to the pair with the
// smaller (left id, right id), so training is deterministic whatever the thread count.
//
// The vocabulary: ids 0..255 are the bytes in GPT-2's order, then one token per merge
// (a merge whose bytes already form a token reuses that token), then <|endoftext|> last.
#include <bd3/error.hpp>
#include <bd3/text/detail/byte_level.hpp>
#include <bd3/text/detail/files.hpp>
#include <bd3/text/detail/pretokenizer.hpp>
#include <bd3/text/gpt2_tokenizer.hpp>

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace bd3::text {

struct BpeTrainProgress {
  int32_t merges_done = 0;
  int32_t merges_target = 0;
  int64_t pair_count = 0;  // occurrences of the pair merged last
};

struct BpeTrainOptions {
  int32_t vocab_size = 8192;   // including the 256 byte tokens and <|endoftext|>
  int64_t min_pair_count = 2;  // stop early when the best pair is rarer than this
  int threads = 0;             // 0: OpenMP's default
  std::function<void(const BpeTrainProgress&)> on_progress;  // every 256 merges and at the end
};

struct BpeTrainStats {
  int64_t bytes = 0;
  int64_t pieces = 0;  // pre-tokenizer pieces in the text
  int64_t unique_pieces = 0;
  int32_t merges = 0;
  int32_t vocab_size = 0;
  double count_seconds = 0;
  double merge_seconds = 0;
};

namespace detail {

// Pieces longer than this are counted as consecutive slices of this size: a pathological
// piece (megabytes of one character) would otherwise cost its length on every merge.
inline constexpr size_t kMaxTrainPieceBytes = 1024;

inline std::vector<std::pair<std::string_view, int64_t>> count_pieces(
    std::span<const std::string_view> texts, int threads, int64_t* total_pieces) {
  std::vector<std::string_view> chunks;
  for (std::string_view t : texts)
    for (std::string_view c : split_at_safe_boundaries(t, size_t{1} << 18)) chunks.push_back(c);
  const int nt = std::max(1, threads > 0 ? threads : omp_get_max_threads());
  std::vector<std::unordered_map<std::string_view, int64_t>> maps(nt);
  std::vector<int64_t> totals(nt, 0);
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  const int64_t count = static_cast<int64_t>(chunks.size());
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    std::unique_ptr<Pretokenizer::Matcher> matcher;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        if (!matcher) matcher = std::make_unique<Pretokenizer::Matcher>(gpt2_pretokenizer());
        gpt2_pretokenizer().for_each_piece(chunks[i], *matcher, [&](std::string_view piece) {
          while (piece.size() > kMaxTrainPieceBytes) {
            ++maps[t][piece.substr(0, kMaxTrainPieceBytes)];
            ++totals[t];
            piece.remove_prefix(kMaxTrainPieceBytes);
          }
          ++maps[t][piece];
          ++totals[t];
        });
      } catch (...) {
#pragma omp critical(bd3_text_train_error)
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  }
  if (error) std::rethrow_exception(error);
  for (int t = 1; t < nt; ++t) {
    for (auto& [piece, n] : maps[t]) maps[0][piece] += n;
    maps[t].clear();
  }
  *total_pieces = 0;
  for (int64_t n : totals) *total_pieces += n;
  std::vector<std::pair<std::string_view, int64_t>> sorted(maps[0].begin(), maps[0].end());
  std::sort(sorted.begin(), sorted.end());
  return sorted;
}

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

struct PairHash {
  size_t operator()(uint64_t k) const {
    return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 17);
  }
};

class BpeMerger {
 public:
  BpeMerger(const std::vector<std::pair<std::string_view, int64_t>>& pieces) {
    const auto& alphabet = byte_level_alphabet();
    std::array<int32_t, 256> byte_to_id{};
    for (int id = 0; id < 256; ++id) {
      byte_to_id[alphabet.gpt2_order[id]] = id;
      tokens_.emplace_back(1, static_cast<char>(alphabet.gpt2_order[id]));
    }
    for (auto& t : tokens_) by_bytes_.emplace(t, static_cast<int32_t>(&t - tokens_.data()));
    words_.reserve(pieces.size());
    for (auto& [piece, freq] : pieces) {
      Word w;
      w.freq = freq;
      for (unsigned char c : piece) w.syms.push_back(byte_to_id[c]);
      words_.push_back(std::move(w));
    }
    stamp_.assign(words_.size(), 0);
    for (uint32_t w = 0; w < words_.size(); ++w) {
      const auto& s = words_[w].syms;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t k = pair_key(s[i], s[i + 1]);
        counts_[k] += words_[w].freq;
        auto& list = where_[k];
        if (list.empty() || list.back() != w) list.push_back(w);
      }
    }
    for (auto& [k, n] : counts_) heap_.push(Candidate{n, k});
  }

  // Runs merges until the vocabulary (bytes + merged tokens) reaches max_tokens or the
  // best pair occurs fewer than min_count times.
  void run(size_t max_tokens, int64_t min_count, const BpeTrainOptions& options) {
    const int32_t target = static_cast<int32_t>(std::max<size_t>(max_tokens, 256) - 256);
    int64_t last_count = 0;
    while (tokens_.size() < max_tokens && !heap_.empty()) {
      const Candidate best = heap_.top();
      heap_.pop();
      auto it = counts_.find(best.key);
      if (it == counts_.end() || it->second != best.count) continue;  // stale
      if (best.count < min_count) break;
      last_count = best.count;
      merge(static_cast<int32_t>(best.key >> 32), static_cast<int32_t>(best.key & 0xFFFFFFFFu));
      if (options.on_progress && merges_.size() % 256 == 0)
        options.on_progress({static_cast<int32_t>(merges_.size()), target, best.count});
    }
    if (options.on_progress)
      options.on_progress({static_cast<int32_t>(merges_.size()), target, last_count});
  }

  std::vector<std::string>& tokens() { return tokens_; }
  std::vector<std::pair<int32_t, int32_t>>& merges() { return merges_; }

 private:
  struct Word {
    std::vector<int32_t> syms;
    int64_t freq = 0;
  };
  struct Candidate {
    int64_t count;
    uint64_t key;
    // The heap's top is the largest count, then the smallest (left, right).
    bool operator<(const Candidate& o) const {
      return count != o.count ? count < o.count : key > o.key;
    }
  };

  void merge(int32_t a, int32_t b) {
    std::string bytes = tokens_[a] + tokens_[b];
    int32_t c;
    if (auto found = by_bytes_.find(bytes); found != by_bytes_.end()) {
      c = found->second;
    } else {
      c = static_cast<int32_t>(tokens_.size());
      tokens_.push_back(bytes);
      by_bytes_.emplace(std::move(bytes), c);
    }
    // A pair can come back when a later merge rebuilt the bytes of an existing token; the
    // encoder applies it at its first rank anyway, so it is listed once.
    if (merged_pairs_.insert(pair_key(a, b)).second) merges_.emplace_back(a, b);
    ++generation_;
    const uint64_t merged_key = pair_key(a, b);
    std::vector<uint32_t> list = std::move(where_[merged_key]);
    where_.erase(merged_key);
    delta_.clear();
    for (uint32_t w : list) {
      if (stamp_[w] == generation_) continue;
      stamp_[w] = generation_;
      auto& s = words_[w].syms;
      const int64_t f = words_[w].freq;
      bool present = false;
      for (size_t i = 0; i + 1 < s.size() && !present; ++i) present = s[i] == a && s[i + 1] == b;
      if (!present) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) delta_[pair_key(s[i], s[i + 1])] -= f;
      size_t out = 0;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          s[out++] = c;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      s.resize(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t k = pair_key(s[i], s[i + 1]);
        delta_[k] += f;
        if (s[i] == c || s[i + 1] == c) {
          auto& l = where_[k];
          if (l.empty() || l.back() != w) l.push_back(w);
        }
      }
    }
    // Apply in key order so the heap sees the same pushes on every run.
    changed_.clear();
    for (auto& [k, d] : delta_)
      if (d != 0) changed_.emplace_back(k, d);
    std::sort(changed_.begin(), changed_.end());
    for (auto& [k, d] : changed_) {
      int64_t& n = counts_[k];
      n += d;
      if (n <= 0) {
        counts_.erase(k);
        where_.erase(k);
      } else {
        heap_.push(Candidate{n, k});
      }
    }
  }

  std::vector<Word> words_;
  std::vector<uint32_t> stamp_;
  uint32_t generation_ = 0;
  std::unordered_map<uint64_t, int64_t, PairHash> counts_;
  std::unordered_map<uint64_t, std::vector<uint32_t>, PairHash> where_;
  std::unordered_map<uint64_t, int64_t, PairHash> delta_;
  std::vector<std::pair<uint64_t, int64_t>> changed_;
  std::priority_queue<Candidate> heap_;
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> by_bytes_;
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::unordered_set<uint64_t, PairHash> merged_pairs_;
};

}  // namespace detail

// Trains a tokenizer on the concatenation of `texts` (each cut separately: no piece spans
// two texts). Text that looks like <|endoftext|> is ordinary text here.
inline Gpt2Tokenizer train_bpe(std::span<const std::string_view> texts,
                               const BpeTrainOptions& options, BpeTrainStats* stats = nullptr) {
  if (options.vocab_size < 257 || static_cast<size_t>(options.vocab_size) > kMaxVocabSize)
    fail_usage("vocabulary size " + std::to_string(options.vocab_size) + " is out of range (257.." +
               std::to_string(kMaxVocabSize) + ")");
  if (options.min_pair_count < 1) fail_usage("min_pair_count must be at least 1");
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  BpeTrainStats s;
  for (std::string_view t : texts) s.bytes += static_cast<int64_t>(t.size());
  auto pieces = detail::count_pieces(texts, options.threads, &s.pieces);
  s.unique_pieces = static_cast<int64_t>(pieces.size());
  const auto t1 = Clock::now();
  detail::BpeMerger merger(pieces);
  pieces.clear();
  merger.run(static_cast<size_t>(options.vocab_size) - 1, options.min_pair_count, options);
  std::vector<std::string> tokens = std::move(merger.tokens());
  tokens.emplace_back(kEndOfText);
  std::vector<uint8_t> special(tokens.size(), 0);
  special.back() = 1;
  s.merges = static_cast<int32_t>(merger.merges().size());
  s.vocab_size = static_cast<int32_t>(tokens.size());
  auto tok =
      Gpt2Tokenizer::from_parts(std::move(tokens), std::move(special), std::move(merger.merges()));
  const auto t2 = Clock::now();
  s.count_seconds = std::chrono::duration<double>(t1 - t0).count();
  s.merge_seconds = std::chrono::duration<double>(t2 - t1).count();
  if (stats != nullptr) *stats = s;
  return tok;
}

inline Gpt2Tokenizer train_bpe(std::string_view text, const BpeTrainOptions& options,
                               BpeTrainStats* stats = nullptr) {
  return train_bpe(std::span<const std::string_view>(&text, 1), options, stats);
}

// Trains on files (each read whole; at most max_file_bytes each) and writes
// the tokenizer into out_dir (Gpt2Tokenizer::save: vocab.json, merges.txt and the Hugging
// Face files), each atomically.
inline Gpt2Tokenizer train_bpe_files(std::span<const std::filesystem::path> files,
                                     const std::filesystem::path& out_dir,
                                     const BpeTrainOptions& options, BpeTrainStats* stats = nullptr,
                                     uint64_t max_file_bytes = uint64_t{4} << 30) {
  if (files.empty()) fail_usage("no training data files given");
  std::vector<std::string> contents;
  contents.reserve(files.size());
  for (const auto& f : files)
    contents.push_back(detail::read_file(f, max_file_bytes, "training data"));
  std::vector<std::string_view> views(contents.begin(), contents.end());
  auto tok = train_bpe(views, options, stats);
  tok.save(out_dir);
  return tok;
}

}  // namespace bd3::text
