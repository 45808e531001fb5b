// fuzz_tokenizer_json: Hugging Face tokenizer.json -> Gpt2Tokenizer::from_tokenizer_json_string; a
// loaded tokenizer must round-trip text and reload from its own vocab_json/merges_txt.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::tokenizer_json(bd3::fuzz::as_text(data, size));
  return 0;
}
