// The corpus pipeline: documents, the wrap layout, the split, the token cache.
#include <bd3/text/bpe_trainer.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/tokenizer.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using bd3::text::Corpus;
using bd3::text::CorpusOptions;
using bd3::text::Split;
using bd3::text::Tokenizer;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void spit(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const bd3::Error& e) {
    return e.what();
  }
  return "(no error)";
}

const Tokenizer& gpt2() {
  static const Tokenizer tok = Tokenizer::load_from(fs::path(BD3_FIXTURES_DIR) / "gpt2");
  return tok;
}

// Chapters of numbered verses, blank lines between chapters.
std::string chapters(int count, int verses) {
  std::string s;
  for (int c = 0; c < count; ++c) {
    if (c > 0) s += "\n";
    for (int v = 0; v < verses; ++v)
      s += "Chapter " + std::to_string(c) + " verse " + std::to_string(v) +
           ": and it came to pass.\n";
  }
  return s;
}

}  // namespace

TEST_CASE("corpus: documents are split on blank lines or per file", "[text][corpus]") {
  using bd3::text::DocumentSplit;
  using bd3::text::split_documents;
  using V = std::vector<std::string_view>;
  CHECK(split_documents("a\nb\n\nc\n", DocumentSplit::blank_lines) == V{"a\nb", "c"});
  CHECK(split_documents("\n\n a\n \t\r\n\n\nb", DocumentSplit::blank_lines) == V{" a", "b"});
  CHECK(split_documents("", DocumentSplit::blank_lines).empty());
  CHECK(split_documents("\n\n\n", DocumentSplit::blank_lines).empty());
  CHECK(split_documents("one line", DocumentSplit::blank_lines) == V{"one line"});
  CHECK(split_documents("a\n\nb\n\n", DocumentSplit::per_file) == V{"a\n\nb"});
  CHECK(split_documents("\n", DocumentSplit::per_file).empty());
}

TEST_CASE("corpus: sequences are BOS + L-1 stream tokens, documents joined with EOS",
          "[text][corpus]") {
  const Tokenizer bytes = Tokenizer::bytes();
  const std::string text = "ab\n\ncde\nf\n\n\ng\n";
  CorpusOptions options;
  options.model_length = 4;
  options.val_fraction = 0.25;
  std::vector<std::string_view> texts = {text, "hi"};
  Corpus c = Corpus::from_texts(bytes, texts, options);
  // Stream: a b EOS c d e \n f EOS g EOS h i EOS
  const std::vector<int32_t> expected = {'a', 'b', 257, 'c', 'd', 'e', '\n',
                                         'f', 257, 'g', 257, 'h', 'i', 257};
  CHECK(std::vector<int32_t>(c.stream().begin(), c.stream().end()) == expected);
  CHECK(c.documents() == 4);
  CHECK(c.num_sequences() == 14 / 3);  // the tail that fills no sequence is dropped
  CHECK(c.size(Split::train) == 3);
  CHECK(c.size(Split::validation) == 1);
  std::vector<int32_t> seq(4);
  c.sequence_at(0, seq);
  CHECK(seq == std::vector<int32_t>{256, 'a', 'b', 257});
  c.sequence_at(1, seq);
  CHECK(seq == std::vector<int32_t>{256, 'c', 'd', 'e'});
  c.sequence(Split::validation, 0, seq);  // the tail split: the last sequence
  CHECK(seq == std::vector<int32_t>{256, 'g', 257, 'h'});
  CHECK(c.global_index(Split::validation, 0) == 3);
  std::vector<int32_t> two(8);
  std::vector<int64_t> idx = {2, 0};
  c.batch(Split::train, idx, two);
  CHECK(two == std::vector<int32_t>{256, '\n', 'f', 257, 256, 'a', 'b', 257});
  CHECK_THROWS_AS(c.sequence(Split::validation, 1, seq), bd3::Error);
  std::vector<int32_t> wrong(3);
  CHECK_THROWS_AS(c.sequence_at(0, wrong), bd3::Error);

  // GPT-2: every sequence starts with BOS (= EOS = 50256) and EOS ends each document.
  CorpusOptions o2;
  o2.model_length = 16;
  const std::string book = chapters(6, 5);
  std::vector<std::string_view> t2 = {book};
  Corpus g = Corpus::from_texts(gpt2(), t2, o2);
  CHECK(g.documents() == 6);
  CHECK(std::count(g.stream().begin(), g.stream().end(), 50256) == 6);
  CHECK(g.stream().back() == 50256);
  std::vector<int32_t> s16(16);
  for (int64_t i = 0; i < g.num_sequences(); ++i) {
    g.sequence_at(i, s16);
    CHECK(s16[0] == 50256);
    CHECK(std::equal(s16.begin() + 1, s16.end(), g.stream().begin() + i * 15));
  }
  // The documents decode back to their text.
  auto first_eos = std::find(g.stream().begin(), g.stream().end(), 50256);
  std::vector<int32_t> doc0(g.stream().begin(), first_eos);
  CHECK(gpt2().decode(doc0) + "\n" == book.substr(0, book.find("\n\n") + 1));
}

TEST_CASE("corpus: the train/validation split is deterministic", "[text][corpus]") {
  const std::string book = chapters(40, 10);
  std::vector<std::string_view> texts = {book};
  for (auto mode : {bd3::text::ValSplit::tail, bd3::text::ValSplit::seeded}) {
    CorpusOptions o;
    o.model_length = 32;
    o.val_fraction = 0.1;
    o.val_split = mode;
    o.split_seed = 7;
    Corpus a = Corpus::from_texts(gpt2(), texts, o);
    Corpus b = Corpus::from_texts(gpt2(), texts, o);
    const int64_t n = a.num_sequences();
    REQUIRE(n > 20);
    CHECK(a.size(Split::validation) == std::llround(n * 0.1));
    CHECK(a.size(Split::train) + a.size(Split::validation) == n);
    std::set<int64_t> seen;
    for (auto s : {Split::train, Split::validation})
      for (int64_t i = 0; i < a.size(s); ++i) {
        CHECK(a.global_index(s, i) == b.global_index(s, i));
        seen.insert(a.global_index(s, i));
      }
    CHECK(static_cast<int64_t>(seen.size()) == n);  // disjoint and complete
    if (mode == bd3::text::ValSplit::tail) {
      CHECK(a.global_index(Split::validation, 0) == a.size(Split::train));
    } else {
      o.split_seed = 8;
      Corpus c = Corpus::from_texts(gpt2(), texts, o);
      bool differs = false;
      for (int64_t i = 0; i < a.size(Split::validation); ++i)
        differs |= a.global_index(Split::validation, i) != c.global_index(Split::validation, i);
      CHECK(differs);
    }
    // Sampling helpers: functions of their seeds, in range.
    auto s1 = a.sample_indices(Split::train, 64, 1, 5),
         s2 = a.sample_indices(Split::train, 64, 1, 5);
    CHECK(s1 == s2);
    CHECK(s1 != a.sample_indices(Split::train, 64, 1, 6));
    for (auto i : s1) CHECK((i >= 0 && i < a.size(Split::train)));
    auto e1 = a.epoch_order(Split::train, 3, 0);
    CHECK(e1 == a.epoch_order(Split::train, 3, 0));
    CHECK(e1 != a.epoch_order(Split::train, 3, 1));
    auto sorted = e1;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i) CHECK(sorted[i] == static_cast<int64_t>(i));
  }
  CorpusOptions tiny;
  tiny.model_length = 8192;
  CHECK(error_of([&] { Corpus::from_texts(gpt2(), texts, tiny); }).find("too small") !=
        std::string::npos);
  CorpusOptions bad;
  bad.model_length = 1;
  CHECK_THROWS_AS(Corpus::from_texts(gpt2(), texts, bad), bd3::Error);
  bad.model_length = 8;
  bad.val_fraction = 1.0;
  CHECK_THROWS_AS(Corpus::from_texts(gpt2(), texts, bad), bd3::Error);
}

TEST_CASE("corpus: the token cache is reused, rebuilt when stale, refused when broken",
          "[text][corpus]") {
  const auto dir = fs::temp_directory_path() / "bd3_test_corpus_cache";
  fs::remove_all(dir);
  fs::create_directories(dir);
  spit(dir / "a.txt", chapters(10, 8));
  spit(dir / "b.txt", chapters(3, 4));
  std::vector<fs::path> files = {dir / "a.txt", dir / "b.txt"};
  CorpusOptions o;
  o.model_length = 64;
  o.cache_path = dir / "tokens.bin";

  Corpus first = Corpus::open(gpt2(), files, o);
  CHECK(first.cache_status() == bd3::text::CacheStatus::built);
  CHECK(first.documents() == 13);
  Corpus second = Corpus::open(gpt2(), files, o);
  CHECK(second.cache_status() == bd3::text::CacheStatus::loaded);
  CHECK(std::equal(first.stream().begin(), first.stream().end(), second.stream().begin(),
                   second.stream().end()));
  CHECK(second.documents() == 13);
  const std::string good = slurp(o.cache_path);
  CHECK(good.substr(0, 7) == "BD3TOKS");

  // Another tokenizer: the cache is stale and rebuilt with the new ids.
  bd3::text::BpeTrainOptions bo;
  bo.vocab_size = 300;
  const std::string corpus_text = slurp(dir / "a.txt");
  Tokenizer small = bd3::text::train_bpe(corpus_text, bo);
  Corpus third = Corpus::open(small, files, o);
  CHECK(third.cache_status() == bd3::text::CacheStatus::rebuilt_stale);
  CHECK_FALSE(std::equal(first.stream().begin(), first.stream().end(), third.stream().begin(),
                         third.stream().end()));
  CHECK(Corpus::open(small, files, o).cache_status() == bd3::text::CacheStatus::loaded);
  // The byte tokenizer too; and changed data.
  CHECK(Corpus::open(Tokenizer::bytes(), files, o).cache_status() ==
        bd3::text::CacheStatus::rebuilt_stale);
  spit(dir / "b.txt", chapters(3, 5));
  CHECK(Corpus::open(Tokenizer::bytes(), files, o).cache_status() ==
        bd3::text::CacheStatus::rebuilt_stale);
  CHECK(Corpus::open(Tokenizer::bytes(), files, o).cache_status() ==
        bd3::text::CacheStatus::loaded);
  // Per-file documents are another stream.
  CorpusOptions per_file = o;
  per_file.documents = bd3::text::DocumentSplit::per_file;
  Corpus pf = Corpus::open(Tokenizer::bytes(), files, per_file);
  CHECK(pf.cache_status() == bd3::text::CacheStatus::rebuilt_stale);
  CHECK(pf.documents() == 2);

  // Broken caches are errors, not silently rebuilt.
  const std::string current = slurp(o.cache_path);
  spit(o.cache_path, current.substr(0, current.size() - 2));
  CHECK(error_of([&] { Corpus::open(Tokenizer::bytes(), files, per_file); }).find("truncated") !=
        std::string::npos);
  spit(o.cache_path, current.substr(0, 30));
  CHECK(error_of([&] { Corpus::open(Tokenizer::bytes(), files, per_file); }).find("truncated") !=
        std::string::npos);
  spit(o.cache_path, current + "xxxx");
  CHECK(error_of([&] {
          Corpus::open(Tokenizer::bytes(), files, per_file);
        }).find("after its last") != std::string::npos);
  spit(o.cache_path, "NOTACACHE" + current.substr(9));
  CHECK(error_of([&] { Corpus::open(Tokenizer::bytes(), files, per_file); }).find("bad magic") !=
        std::string::npos);
  std::string bad_id = current;
  bad_id[bad_id.size() - 2] = '\x7f';  // the last id becomes >= 2^23
  spit(o.cache_path, bad_id);
  CHECK(error_of([&] { Corpus::open(Tokenizer::bytes(), files, per_file); }).find("out of range") !=
        std::string::npos);
  spit(o.cache_path, current);
  CHECK(Corpus::open(Tokenizer::bytes(), files, per_file).cache_status() ==
        bd3::text::CacheStatus::loaded);
  // Missing corpus files are errors.
  std::vector<fs::path> missing = {dir / "nope.txt"};
  CHECK(error_of([&] { Corpus::open(Tokenizer::bytes(), missing, o); }).find("cannot open") !=
        std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("corpus: the default corpus encodes in parallel like serially", "[text][corpus]") {
  const auto path = bd3::text::default_corpus_path();
  if (!fs::exists(path)) {
    WARN("skipped: no default corpus at " << path << " (run scripts/get_corpus.sh)");
    return;
  }
  CorpusOptions o;
  o.model_length = 1024;
  std::vector<fs::path> files = {path};
  Corpus c = Corpus::open(gpt2(), files, o);
  CHECK(c.documents() == 1189);  // chapters
  const std::string text = slurp(path);
  auto docs = bd3::text::split_documents(text, o.documents);
  REQUIRE(docs.size() == 1189);
  std::vector<int32_t> serial;
  for (auto d : docs) {
    auto ids = gpt2().encode(d);
    serial.insert(serial.end(), ids.begin(), ids.end());
    serial.push_back(50256);
  }
  CHECK(std::equal(serial.begin(), serial.end(), c.stream().begin(), c.stream().end()));
  CHECK(c.size(Split::validation) == std::llround(c.num_sequences() * 0.05));
}
