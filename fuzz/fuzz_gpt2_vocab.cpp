// fuzz_gpt2_vocab: vocab.json (fuzzed) with a fixed valid merges.txt ->
// Gpt2Tokenizer::from_strings; a loaded tokenizer must round-trip text and reload from its own
// vocab_json/merges_txt.
#include "targets.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bd3::fuzz::small_gpt2();  // the fixed partner file comes from the fixture tokenizer
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::gpt2_vocab(bd3::fuzz::as_text(data, size));
  return 0;
}
