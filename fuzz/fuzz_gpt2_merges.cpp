// fuzz_gpt2_merges: merges.txt (fuzzed) over a fixed valid vocabulary ->
// Gpt2Tokenizer::from_vocab_tokens (from_strings minus the vocab.json it reads once); a loaded
// tokenizer must round-trip text and reload from its own merges_txt.
#include "targets.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bd3::fuzz::small_gpt2();  // the fixed partner file comes from the fixture tokenizer
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::gpt2_merges(bd3::fuzz::as_text(data, size));
  return 0;
}
