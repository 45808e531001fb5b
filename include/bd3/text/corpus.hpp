#pragma once
// The corpus pipeline: text files -> documents -> token ids (parallel encode) -> a binary
// token cache -> training sequences of model_length tokens in the "wrap" style.
//
// Documents: with DocumentSplit::blank_lines (the default) a document is a maximal run
// of non-blank lines (a blank line is empty or only spaces, tabs and '\r'); its text is
// those lines with their inner newlines, without the last newline. With
// DocumentSplit::per_file each file is one document, without its trailing newlines.
// Empty documents are dropped. The default corpus (scripts/get_corpus.sh) has one verse
// per line and a blank line between chapters, so each chapter is one document.
//
// The stream is doc1 EOS doc2 EOS ... docN EOS. Sequence g (of num_sequences() =
// floor(stream / (L-1))) is BOS followed by stream[g*(L-1), (g+1)*(L-1)); the tail
// that does not fill a sequence is dropped. Validation takes the last val_fraction of
// the sequences (ValSplit::tail, the default, so that no text is shared across the
// split except at one boundary) or a seeded random subset (ValSplit::seeded).
//
// Token cache file (little-endian):
//   8 bytes  magic "BD3TOKS\0"
//   u32      version (1)
//   u32      fingerprint length F (at most 4096)
//   F bytes  fingerprint: tokenizer fingerprint + document split mode + hash of the data
//   u64      document count
//   u64      token count N
//   N x u32  token ids (the stream above)
// A cache whose version or fingerprint differs is stale and rebuilt; a cache with a
// wrong magic, a wrong size (truncated or trailing bytes) or an id outside the
// tokenizer's vocabulary is an error (never silently trusted or overwritten).
#include <bd3/detail/random.hpp>
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>
#include <bd3/text/detail/files.hpp>
#include <bd3/text/detail/pretokenizer.hpp>
#include <bd3/text/tokenizer.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bd3::text {

static_assert(std::endian::native == std::endian::little,
              "the token cache is read and written as little-endian memory");

enum class DocumentSplit { blank_lines, per_file };
enum class ValSplit { tail, seeded };
enum class Split { train, validation };
enum class CacheStatus { none, built, loaded, rebuilt_stale };

struct CorpusOptions {
  int32_t model_length = 1024;  // L: BOS + L-1 stream tokens per sequence
  double val_fraction = 0.05;   // in [0, 1)
  ValSplit val_split = ValSplit::tail;
  uint64_t split_seed = 0;  // for ValSplit::seeded
  DocumentSplit documents = DocumentSplit::blank_lines;
  std::filesystem::path cache_path;  // empty: no cache file
  bool write_cache = true;           // false: read a matching cache, never write one
  int threads = 0;                   // 0: OpenMP's default
  uint64_t max_file_bytes = uint64_t{4} << 30;
};

// The default corpus: $BD3_CORPUS, else /tmp/bd3_corpus/kjv.txt (written by
// scripts/get_corpus.sh). The file may not exist.
inline std::filesystem::path default_corpus_path() {
  const char* env = std::getenv("BD3_CORPUS");
  return env != nullptr && *env != '\0' ? std::filesystem::path(env)
                                        : std::filesystem::path("/tmp/bd3_corpus/kjv.txt");
}

// Splits a text into documents (see the top of this file).
inline std::vector<std::string_view> split_documents(std::string_view text, DocumentSplit mode) {
  std::vector<std::string_view> docs;
  if (mode == DocumentSplit::per_file) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    if (!text.empty()) docs.push_back(text);
    return docs;
  }
  size_t doc_start = std::string_view::npos, doc_end = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    const bool blank = line.find_first_not_of(" \t\r") == std::string_view::npos;
    if (blank) {
      if (doc_start != std::string_view::npos)
        docs.push_back(text.substr(doc_start, doc_end - doc_start));
      doc_start = std::string_view::npos;
    } else {
      if (doc_start == std::string_view::npos) doc_start = pos;
      doc_end = end;
    }
    pos = end + 1;
  }
  if (doc_start != std::string_view::npos)
    docs.push_back(text.substr(doc_start, doc_end - doc_start));
  return docs;
}

namespace detail {

inline constexpr char kTokenCacheMagic[8] = {'B', 'D', '3', 'T', 'O', 'K', 'S', '\0'};
inline constexpr uint32_t kTokenCacheVersion = 1;
inline constexpr uint32_t kMaxFingerprintBytes = 4096;

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// SplitMix64 (detail/random.hpp) as a sequential generator: the same sequence everywhere.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() { return bd3::detail::mix64(state_ += bd3::detail::golden_gamma); }
  // Uniform in [0, bound) up to a bias below bound / 2^64.
  uint64_t below(uint64_t bound) { return next() % bound; }

 private:
  uint64_t state_;
};

inline void shuffle(std::vector<int64_t>& v, SplitMix64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

}  // namespace detail

struct TokenCache {
  std::string fingerprint;
  uint64_t documents = 0;
  std::vector<int32_t> tokens;
};

// Writes a token cache atomically.
inline void write_token_cache(const std::filesystem::path& path, std::string_view fingerprint,
                              uint64_t documents, std::span<const int32_t> tokens) {
  if (fingerprint.size() > detail::kMaxFingerprintBytes) fail("token cache fingerprint too long");
  std::string header(detail::kTokenCacheMagic, 8);
  detail::put<uint32_t>(header, detail::kTokenCacheVersion);
  detail::put<uint32_t>(header, static_cast<uint32_t>(fingerprint.size()));
  header += fingerprint;
  detail::put<uint64_t>(header, documents);
  detail::put<uint64_t>(header, tokens.size());
  const std::string_view chunks[2] = {
      header, std::string_view(reinterpret_cast<const char*>(tokens.data()), tokens.size_bytes())};
  io::write_file_atomic_chunks(path, chunks);
}

enum class TokenCacheRead { ok, absent, stale };

namespace detail {

// The token cache format over a byte source of `size` bytes: read(dst, n) copies the next
// n bytes and returns false when fewer are left. `where` names the source in messages.
template <class Read>
TokenCacheRead parse_token_cache(Read&& read, uint64_t size, std::string_view fingerprint,
                                 int32_t vocab_size, TokenCache& out, const std::string& where) {
  auto read_exact = [&](void* dst, size_t n, const char* what) {
    if (n > 0 && !read(dst, n)) fail(where + " is truncated (in the " + what + ")");
  };
  char magic[8];
  read_exact(magic, 8, "magic");
  if (std::memcmp(magic, kTokenCacheMagic, 8) != 0)
    fail(where + " is not a bd3 token cache (bad magic)");
  uint32_t version = 0, fp_len = 0;
  read_exact(&version, 4, "header");
  if (version != kTokenCacheVersion) return TokenCacheRead::stale;
  read_exact(&fp_len, 4, "header");
  if (fp_len > kMaxFingerprintBytes)
    fail(where + " is malformed (fingerprint length " + std::to_string(fp_len) + ")");
  std::string fp(fp_len, '\0');
  read_exact(fp.data(), fp_len, "header");
  if (fp != fingerprint) return TokenCacheRead::stale;
  uint64_t documents = 0, count = 0;
  read_exact(&documents, 8, "header");
  read_exact(&count, 8, "header");
  const uint64_t header_bytes = 8 + 4 + 4 + uint64_t{fp_len} + 8 + 8;
  if (count > (size - header_bytes) / 4)
    fail(where + " is truncated: the header says " + std::to_string(count) +
         " tokens, the file holds " + std::to_string((size - header_bytes) / 4));
  if (size != header_bytes + 4 * count)
    fail(where + " has " + std::to_string(size - header_bytes - 4 * count) +
         " bytes after its last token");
  out.tokens.resize(count);
  read_exact(out.tokens.data(), count * 4, "token ids");
  for (uint64_t i = 0; i < count; ++i)
    if (static_cast<uint32_t>(out.tokens[i]) >= static_cast<uint32_t>(vocab_size))
      fail(where + ": id " + std::to_string(static_cast<uint32_t>(out.tokens[i])) +
           " at position " + std::to_string(i) + " is out of range (vocabulary size " +
           std::to_string(vocab_size) + ")");
  out.fingerprint = std::move(fp);
  out.documents = documents;
  return TokenCacheRead::ok;
}

}  // namespace detail

// Reads a token cache made for `fingerprint`. Returns absent when there is no file and
// stale when it was made by another version or for other data or another tokenizer (ids
// not read). bd3::Error when the file is not a token cache, is truncated or longer than
// its header says, or holds an id >= vocab_size.
inline TokenCacheRead read_token_cache(const std::filesystem::path& path,
                                       std::string_view fingerprint, int32_t vocab_size,
                                       TokenCache& out) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    if (errno == ENOENT) return TokenCacheRead::absent;
    fail_io("cannot open token cache " + path.string() + ": " + std::strerror(errno));
  }
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  const std::string where = "token cache " + path.string();
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) fail_io("cannot stat " + where + ": " + ec.message());
  return detail::parse_token_cache(
      [&](void* dst, size_t n) { return std::fread(dst, 1, n, f) == n; }, size, fingerprint,
      vocab_size, out, where);
}

// The same for a token cache held in memory; `source` names it in messages.
inline TokenCacheRead parse_token_cache(std::string_view bytes, std::string_view fingerprint,
                                        int32_t vocab_size, TokenCache& out,
                                        const std::string& source = "token cache") {
  size_t pos = 0;
  auto read = [&](void* dst, size_t n) {
    if (bytes.size() - pos < n) return false;
    std::memcpy(dst, bytes.data() + pos, n);
    pos += n;
    return true;
  };
  return detail::parse_token_cache(read, bytes.size(), fingerprint, vocab_size, out, source);
}

class Corpus {
 public:
  // Reads and encodes `files` (or loads the token cache when it is current).
  static Corpus open(const Tokenizer& tokenizer, std::span<const std::filesystem::path> files,
                     const CorpusOptions& options) {
    check_options(options);
    if (files.empty()) fail_usage("no corpus files given");
    std::vector<std::string> contents;
    contents.reserve(files.size());
    for (const auto& f : files)
      contents.push_back(detail::read_file(f, options.max_file_bytes, "corpus file"));
    std::vector<std::string_view> views(contents.begin(), contents.end());
    Corpus c(options, tokenizer.bos_id());
    c.fingerprint_ = fingerprint_of(tokenizer, views, options.documents);
    TokenCache cache;
    TokenCacheRead read = TokenCacheRead::absent;
    if (!options.cache_path.empty())
      read = read_token_cache(options.cache_path, c.fingerprint_, tokenizer.vocab_size(), cache);
    if (read == TokenCacheRead::ok) {
      c.tokens_ = std::move(cache.tokens);
      c.documents_ = static_cast<int64_t>(cache.documents);
      c.status_ = CacheStatus::loaded;
    } else {
      c.build(tokenizer, views);
      if (!options.cache_path.empty() && options.write_cache) {
        write_token_cache(options.cache_path, c.fingerprint_, static_cast<uint64_t>(c.documents_),
                          c.tokens_);
        c.status_ = read == TokenCacheRead::stale ? CacheStatus::rebuilt_stale : CacheStatus::built;
      }
    }
    c.make_split();
    return c;
  }

  // From texts in memory (each split into documents like a file); no cache.
  static Corpus from_texts(const Tokenizer& tokenizer, std::span<const std::string_view> texts,
                           const CorpusOptions& options) {
    check_options(options);
    Corpus c(options, tokenizer.bos_id());
    c.fingerprint_ = fingerprint_of(tokenizer, texts, options.documents);
    c.build(tokenizer, texts);
    c.make_split();
    return c;
  }

  std::span<const int32_t> stream() const { return tokens_; }
  int64_t documents() const { return documents_; }
  int32_t model_length() const { return options_.model_length; }
  int64_t num_sequences() const {
    return static_cast<int64_t>(tokens_.size()) / (options_.model_length - 1);
  }
  int64_t size(Split s) const { return static_cast<int64_t>(indices(s).size()); }
  CacheStatus cache_status() const { return status_; }
  const std::string& fingerprint() const { return fingerprint_; }

  // Index among all sequences of the i-th sequence of a split.
  int64_t global_index(Split s, int64_t i) const {
    const auto& idx = indices(s);
    if (i < 0 || i >= static_cast<int64_t>(idx.size()))
      fail("sequence " + std::to_string(i) + " is out of range (" + split_name(s) + " has " +
           std::to_string(idx.size()) + ")");
    return idx[static_cast<size_t>(i)];
  }

  // Writes sequence g (among all sequences) into out (model_length ids).
  void sequence_at(int64_t g, std::span<int32_t> out) const {
    const int32_t L = options_.model_length;
    if (static_cast<int64_t>(out.size()) != L)
      fail("sequence buffer holds " + std::to_string(out.size()) + " ids, expected " +
           std::to_string(L));
    if (g < 0 || g >= num_sequences())
      fail("sequence " + std::to_string(g) + " is out of range (" +
           std::to_string(num_sequences()) + " sequences)");
    out[0] = bos_;
    const int32_t* src = tokens_.data() + g * (L - 1);
    std::copy(src, src + (L - 1), out.begin() + 1);
  }
  void sequence(Split s, int64_t i, std::span<int32_t> out) const {
    sequence_at(global_index(s, i), out);
  }

  // Writes the sequences indices[k] of split s, one after the other, into out.
  void batch(Split s, std::span<const int64_t> indices, std::span<int32_t> out) const {
    const size_t L = static_cast<size_t>(options_.model_length);
    if (out.size() != indices.size() * L)
      fail("batch buffer holds " + std::to_string(out.size()) + " ids, expected " +
           std::to_string(indices.size() * L));
    for (size_t k = 0; k < indices.size(); ++k) sequence(s, indices[k], out.subspan(k * L, L));
  }

  // batch_size indices of split s drawn uniformly (with replacement), a function of
  // (seed, step) only.
  std::vector<int64_t> sample_indices(Split s, int64_t batch_size, uint64_t seed,
                                      uint64_t step) const {
    const int64_t n = size(s);
    if (n == 0) fail(split_name(s) + " split is empty");
    detail::SplitMix64 rng(seed ^ (step * 0xD1B54A32D192ED03ull));
    std::vector<int64_t> out(static_cast<size_t>(std::max<int64_t>(batch_size, 0)));
    for (auto& i : out) i = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n)));
    return out;
  }

  // A permutation of 0..size(s)-1, a function of (seed, epoch) only.
  std::vector<int64_t> epoch_order(Split s, uint64_t seed, uint64_t epoch) const {
    std::vector<int64_t> order(static_cast<size_t>(size(s)));
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    detail::SplitMix64 rng(seed ^ (epoch * 0x9E3779B97F4A7C15ull) ^ 0x5851F42D4C957F2Dull);
    detail::shuffle(order, rng);
    return order;
  }

 private:
  Corpus(const CorpusOptions& options, int32_t bos) : options_(options), bos_(bos) {}

  static void check_options(const CorpusOptions& o) {
    if (o.model_length < 2)
      fail_usage("model_length must be at least 2, got " + std::to_string(o.model_length));
    if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0))
      fail_usage("val_fraction must be in [0, 1), got " + std::to_string(o.val_fraction));
  }

  static std::string split_name(Split s) { return s == Split::train ? "train" : "validation"; }

  const std::vector<int64_t>& indices(Split s) const { return s == Split::train ? train_ : val_; }

  static std::string fingerprint_of(const Tokenizer& tokenizer,
                                    std::span<const std::string_view> texts, DocumentSplit mode) {
    detail::Hasher h;
    h.add_u64(texts.size());
    for (auto t : texts) h.add(t);
    return "bd3-corpus;tokenizer=" + tokenizer.fingerprint() +
           ";documents=" + (mode == DocumentSplit::per_file ? "per-file" : "blank-lines") +
           ";data=" + std::to_string(texts.size()) + "-" + h.hex();
  }

  void build(const Tokenizer& tokenizer, std::span<const std::string_view> texts) {
    // Documents are cut further at safe boundaries so one huge document still spreads
    // over all threads; chunk_end[d] is one past the last chunk of document d.
    std::vector<std::string_view> chunks;
    std::vector<size_t> chunk_end;
    for (auto text : texts)
      for (auto doc : split_documents(text, options_.documents)) {
        for (auto c : detail::split_at_safe_boundaries(doc, size_t{1} << 20)) chunks.push_back(c);
        chunk_end.push_back(chunks.size());
      }
    auto parts = tokenizer.encode_batch(chunks, false, options_.threads);
    size_t total = chunk_end.size();
    for (auto& p : parts) total += p.size();
    tokens_.clear();
    tokens_.reserve(total);
    const int32_t eos = tokenizer.eos_id();
    size_t next_chunk = 0;
    for (size_t end : chunk_end) {
      for (; next_chunk < end; ++next_chunk) {
        tokens_.insert(tokens_.end(), parts[next_chunk].begin(), parts[next_chunk].end());
        std::vector<int32_t>().swap(parts[next_chunk]);
      }
      tokens_.push_back(eos);
    }
    documents_ = static_cast<int64_t>(chunk_end.size());
  }

  void make_split() {
    const int64_t n = num_sequences();
    const int64_t n_val = options_.val_fraction > 0
                              ? std::max<int64_t>(1, std::llround(n * options_.val_fraction))
                              : 0;
    if (n - n_val < 1)
      fail("corpus too small: " + std::to_string(tokens_.size()) + " tokens make " +
           std::to_string(n) + " sequences of length " + std::to_string(options_.model_length) +
           ", need at least " + std::to_string(n_val + 1));
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    if (options_.val_split == ValSplit::seeded) {
      detail::SplitMix64 rng(options_.split_seed);
      detail::shuffle(order, rng);
      val_.assign(order.begin(), order.begin() + n_val);
      train_.assign(order.begin() + n_val, order.end());
      std::sort(val_.begin(), val_.end());
      std::sort(train_.begin(), train_.end());
    } else {
      train_.assign(order.begin(), order.end() - n_val);
      val_.assign(order.end() - n_val, order.end());
    }
  }

  CorpusOptions options_;
  int32_t bos_;
  std::vector<int32_t> tokens_;
  int64_t documents_ = 0;
  std::vector<int64_t> train_, val_;
  CacheStatus status_ = CacheStatus::none;
  std::string fingerprint_;
};

}  // namespace bd3::text
