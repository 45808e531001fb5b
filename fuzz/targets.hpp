#pragma once
// The entry points of the fuzz targets (fuzz/fuzz_*.cpp), shared with the regression test
// (tests/test_fuzz_regressions.cpp). Each takes one input, runs it through the library's
// parser, and returns normally when the parser accepts it or throws a bd3::Error; any
// other exception escapes, and a broken invariant (a round trip that does not give back
// its input, an accepted value out of range) aborts with a message on stderr.
//
// BD3_FIXTURES_DIR (tests/data/fixtures) must be defined: the GPT-2 tokenizer and the
// parity configs come from there.
#include <bd3/bd3.hpp>
#include <bd3/io/parity_cases.hpp>
#include <bd3/train/trainer_state.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#ifndef BD3_FIXTURES_DIR
#error "BD3_FIXTURES_DIR must name tests/data/fixtures"
#endif

namespace bd3::fuzz {

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// A broken invariant: abort so that libFuzzer saves the input (and a test fails).
inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "bd3 fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

inline std::filesystem::path fixtures() {
  return BD3_FIXTURES_DIR;
}

// The fixture GPT-2 tokenizer (50257 tokens), loaded once.
inline const text::Gpt2Tokenizer& fixture_gpt2() {
  static const auto tokenizer = text::Gpt2Tokenizer::from_files(fixtures() / "gpt2" / "vocab.json",
                                                                fixtures() / "gpt2" / "merges.txt");
  return tokenizer;
}

// A small valid GPT-2 tokenizer: the 256 byte tokens and the first 256 merges of the
// fixture, plus <|endoftext|> (513 tokens). The partner file of the vocab/merges targets.
inline const text::Gpt2Tokenizer& small_gpt2() {
  static const auto tokenizer = [] {
    const auto& full = fixture_gpt2();
    constexpr int32_t kMerges = 256;
    std::vector<std::string> bytes;
    for (int32_t id = 0; id < 256 + kMerges; ++id) bytes.emplace_back(full.token_bytes(id));
    bytes.emplace_back(text::kEndOfText);
    std::vector<uint8_t> special(bytes.size(), 0);
    special.back() = 1;
    std::vector<std::pair<int32_t, int32_t>> merges(full.merges().begin(),
                                                    full.merges().begin() + kMerges);
    return text::Gpt2Tokenizer::from_parts(std::move(bytes), std::move(special), std::move(merges));
  }();
  return tokenizer;
}

// Ids -> text through the streaming decoder, one id at a time.
template <class Tok>
std::string stream_decode(const Tok& tokenizer, const std::vector<int32_t>& ids) {
  auto decoder = tokenizer.stream_decoder();
  std::string out;
  for (int32_t id : ids) out += decoder.feed(id);
  return out + decoder.flush();
}

// decode(encode(text)) == text, with and without special tokens, for any tokenizer; with
// `streaming`, also through the streaming decoder.
template <class Tok>
void check_round_trip(const Tok& tokenizer, std::string_view text, bool streaming) {
  for (bool allow_special : {false, true}) {
    const std::vector<int32_t> ids = tokenizer.encode(text, allow_special);
    for (int32_t id : ids) check(id >= 0 && id < tokenizer.vocab_size(), "encode: id in range");
    if (!allow_special)
      for (int32_t id : ids)
        check(!tokenizer.is_special(id), "encode: no special id without allow_special");
    check(tokenizer.decode(ids) == text, "decode(encode(text)) == text");
    if (streaming) check(stream_decode(tokenizer, ids) == text, "streaming decode == text");
  }
}

// A loaded (fuzzed) GPT-2 tokenizer: encoding round trips, and `reload` (a tokenizer read
// back from the files save() writes) is the same tokenizer. The text encoded is a fixed
// sample and the start of the input (enough for the long-piece path; fuzz_encode_decode
// covers encoding in depth).
template <class Reload>
void exercise_gpt2(const text::Gpt2Tokenizer& tokenizer, std::string_view input, Reload reload) {
  check_round_trip(tokenizer, "Hello, world! <|endoftext|>  spaces\n\n\xff\xfe caf\xc3\xa9", false);
  check_round_trip(tokenizer, input.substr(0, 1024), false);
  try {
    check(reload(tokenizer).fingerprint() == tokenizer.fingerprint(),
          "the saved files reload the same");
  } catch (const Error& e) {
    std::fprintf(stderr, "reload: %s\n", e.what());
    check(false, "the files save() writes load back");
  }
}

// Reloads through the files save() writes: vocab.json + merges.txt, or tokenizer.json.
inline text::Gpt2Tokenizer reload_saved_files(const text::Gpt2Tokenizer& tokenizer) {
  return tokenizer.fits_gpt2_files()
             ? text::Gpt2Tokenizer::from_strings(tokenizer.vocab_json(), tokenizer.merges_txt())
             : text::Gpt2Tokenizer::from_tokenizer_json_string(tokenizer.tokenizer_json());
}

// ---- the targets ------------------------------------------------------------------------

// io::SafetensorsFile::parse (the validation open() applies to files), then every tensor
// read back; an all-F32 file is written again and must parse to the same tensors.
inline void safetensors(std::string_view data) {
  try {
    const auto file = io::SafetensorsFile::parse(std::string(data), "fuzz.safetensors");
    bool all_f32 = true;
    std::vector<std::vector<float>> values;
    for (const auto& t : file.tensors()) {
      check(file.find(t.name) == &t, "find() returns the tensor");
      check(file.raw(t.name).size() == t.end - t.begin, "raw() spans data_offsets");
      const bool floating = t.dtype == io::DType::F64 || t.dtype == io::DType::F32 ||
                            t.dtype == io::DType::F16 || t.dtype == io::DType::BF16;
      all_f32 = all_f32 && t.dtype == io::DType::F32;
      try {
        values.push_back(file.load_float(t.name));
        check(floating && values.back().size() == size_t(t.numel()), "load_float size");
      } catch (const Error&) {
        check(!floating, "a floating-point tensor loads as float");
      }
    }
    if (!all_f32) return;
    std::vector<io::TensorToWrite> tensors;
    for (size_t i = 0; i < file.tensors().size(); ++i) {
      const auto& t = file.tensors()[i];
      tensors.push_back({t.name, t.shape, values[i]});
    }
    const auto again =
        io::SafetensorsFile::parse(io::serialize_safetensors(tensors, file.metadata()));
    check(again.tensors().size() == file.tensors().size(), "rewrite keeps every tensor");
    check(again.metadata() == file.metadata(), "rewrite keeps the metadata");
    for (const auto& t : file.tensors()) {
      const auto* u = again.find(t.name);
      check(u != nullptr && u->shape == t.shape, "rewrite keeps names and shapes");
      const auto a = file.raw(t.name), b = again.raw(t.name);
      check(a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin()),
            "rewrite keeps the bytes");
    }
  } catch (const Error&) {
  }
}

// config.json -> ModelConfig (parse_config_json: JSON, field types, validate()), the
// parameter layout it implies, and the to_json() round trip.
inline void config_json(std::string_view text) {
  try {
    const ModelConfig config = parse_config_json(text, "config.json");
    check(ParameterLayout(config).total() > 0, "a valid config has parameters");
    const ModelConfig again = ModelConfig::from_json(config.to_json());
    check(again.to_json() == config.to_json(), "config to_json round trip");
  } catch (const Error&) {
  }
}

// vocab.json (fuzzed) + the small tokenizer's merges.txt -> Gpt2Tokenizer::from_strings.
inline void gpt2_vocab(std::string_view vocab_json) {
  static const std::string merges = small_gpt2().merges_txt();
  try {
    exercise_gpt2(text::Gpt2Tokenizer::from_strings(vocab_json, merges), vocab_json,
                  reload_saved_files);
  } catch (const Error&) {
  }
}

// merges.txt (fuzzed) over the small tokenizer's vocabulary. from_strings is read_vocab_json
// + from_vocab_tokens; the vocabulary is fixed here, so it is read once (fuzz_gpt2_vocab
// fuzzes that half), and the reload rereads only the merges.txt save() writes.
inline void gpt2_merges(std::string_view merges_txt) {
  static const std::vector<std::string> vocab =
      text::Gpt2Tokenizer::read_vocab_json(small_gpt2().vocab_json());
  try {
    exercise_gpt2(text::Gpt2Tokenizer::from_vocab_tokens(vocab, merges_txt), merges_txt,
                  [](const text::Gpt2Tokenizer& tokenizer) {
                    check(tokenizer.fits_gpt2_files(), "a vocab.json tokenizer fits its files");
                    return text::Gpt2Tokenizer::from_vocab_tokens(vocab, tokenizer.merges_txt());
                  });
  } catch (const Error&) {
  }
}

// A Hugging Face tokenizer.json -> Gpt2Tokenizer::from_tokenizer_json_string.
inline void tokenizer_json(std::string_view text) {
  try {
    exercise_gpt2(text::Gpt2Tokenizer::from_tokenizer_json_string(text), text, reload_saved_files);
  } catch (const Error&) {
  }
}

// Arbitrary bytes through the fixture GPT-2 tokenizer and the byte tokenizer (encode,
// decode, streaming decode), and the bytes read as int32 ids decoded by both.
inline void encode_decode(std::string_view data) {
  check_round_trip(fixture_gpt2(), data, true);
  check_round_trip(text::ByteTokenizer{}, data, true);
  std::vector<int32_t> ids(data.size() / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data.data(), ids.size() * 4);
  auto decode_ids = [&](const auto& tokenizer) {
    const bool valid = std::all_of(
        ids.begin(), ids.end(), [&](int32_t id) { return id >= 0 && id < tokenizer.vocab_size(); });
    try {
      const std::string text = tokenizer.decode(ids);
      check(valid, "decode accepts only ids in range");
      check(stream_decode(tokenizer, ids) == text, "streaming decode == decode");
    } catch (const Error&) {
      check(!valid, "decode rejects only ids out of range");
    }
  };
  decode_ids(fixture_gpt2());
  decode_ids(text::ByteTokenizer{});
}

// The token cache format (text::parse_token_cache, which read_token_cache runs on a file),
// made for the fingerprint "fuzz" and a vocabulary of 259.
inline void token_cache(std::string_view data) {
  constexpr int32_t kVocab = 259;
  text::TokenCache cache;
  try {
    if (text::parse_token_cache(data, "fuzz", kVocab, cache) == text::TokenCacheRead::ok) {
      check(cache.fingerprint == "fuzz", "token cache fingerprint");
      for (int32_t id : cache.tokens) check(id >= 0 && id < kVocab, "token cache id in range");
    }
  } catch (const Error&) {
  }
}

// A tiny model (vocabulary 4, width 4): the layout trainer_state.safetensors is read into.
inline const ParameterLayout& tiny_layout() {
  static const ParameterLayout layout = [] {
    ModelConfig c;
    c.vocab_size = 4, c.hidden_dim = 4, c.n_heads = 2, c.cond_dim = 2, c.n_blocks = 1;
    c.model_length = 4, c.block_size = 2, c.mask_index = 3;
    c.validate();
    return ParameterLayout(c);
  }();
  return layout;
}

// The files of a training checkpoint, each fed the same bytes: trainer_state.json
// (TrainerState::from_json, and its to_json round trip), checkpoint.json
// (parse_checkpoint_pointer) and trainer_state.safetensors (read_trainer_tensors).
inline void trainer_state(std::string_view data) {
  nlohmann::json json;
  try {
    json = parse_json_text(data, "trainer_state.json");
  } catch (const Error&) {
  }
  try {
    const auto state = train::TrainerState::from_json(json, "trainer_state.json");
    const auto again = train::TrainerState::from_json(state.to_json(), "trainer_state.json");
    check(again.to_json().dump() == state.to_json().dump(), "trainer state round trip");
  } catch (const Error&) {
  }
  try {
    const auto pointer = train::parse_checkpoint_pointer(json, "checkpoint.json");
    check(!pointer.current.empty() && pointer.current.find('/') == std::string::npos,
          "checkpoint name is one path component");
  } catch (const Error&) {
  }
  try {
    const auto file = io::SafetensorsFile::parse(std::string(data), "trainer_state.safetensors");
    std::vector<float> weights, exp_avg, exp_avg_sq;
    train::read_trainer_tensors(file, tiny_layout(), weights, exp_avg, exp_avg_sq);
    check(weights.size() == size_t(tiny_layout().total()), "trainer tensors fill the layout");
  } catch (const Error&) {
  }
}

// cases.json (io::parse_parity_cases_text) against the b4 parity fixture's config.
inline void cases_json(std::string_view text) {
  static const ModelConfig config = load_config(fixtures() / "parity" / "b4");
  try {
    const auto cases = io::parse_parity_cases_text(text, config);
    if (cases.train) {
      check(cases.train->xt.size() == size_t(config.model_length), "train.xt size");
      check(cases.train->t_per_block.size() == size_t(config.model_length / config.block_size),
            "train.t_per_block size");
    }
    if (cases.kv_cache)
      for (const auto& step : *cases.kv_cache)
        for (int32_t id : step.noisy_block)
          check(id >= 0 && id < config.vocab_size, "kv_cache id in range");
  } catch (const Error&) {
  }
}

// .npy (io::read_npy, which reads a path: the input goes through a file of this process)
// and, for an accepted array, the write_npy round trip.
inline void npy(std::string_view data) {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() /
             ("bd3_fuzz_npy_" + std::to_string(static_cast<long>(::getpid())));
    std::filesystem::create_directories(d);
    return d;
  }();
  const auto path = dir / "input.npy", again_path = dir / "again.npy";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    check(f != nullptr, "the fuzz input file opens");
    check(std::fwrite(data.data(), 1, data.size(), f) == data.size() && std::fclose(f) == 0,
          "the fuzz input file is written");
  }
  try {
    const auto array = io::read_npy(path);
    int64_t numel = 1;
    for (int64_t d : array.shape) {
      check(d >= 0, "an accepted shape has no negative dimension");
      numel *= d;
    }
    check(size_t(numel) == array.data.size(), "the data fill the shape");
    io::write_npy(again_path, array.shape, array.data);
    const auto again = io::read_npy(again_path);
    check(again.shape == array.shape, "rewrite keeps the shape");
    // Bitwise (NaNs included); an empty array's data() may be null, which memcmp refuses.
    check(again.data.size() == array.data.size() &&
              (array.data.empty() || std::memcmp(again.data.data(), array.data.data(),
                                                 array.data.size() * sizeof(float)) == 0),
          "rewrite keeps the values");
  } catch (const Error&) {
  }
}

}  // namespace bd3::fuzz
