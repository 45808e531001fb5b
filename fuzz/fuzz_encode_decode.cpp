// fuzz_encode_decode: arbitrary bytes through the fixture GPT-2 tokenizer and the byte tokenizer:
// decode(encode(x)) == x (also streaming), and the bytes as int32 ids decoded by both
// (ids out of range must be a bd3::Error).
#include "targets.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  bd3::fuzz::fixture_gpt2();  // load the 50257-token tokenizer once, before fuzzing
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::encode_decode(bd3::fuzz::as_text(data, size));
  return 0;
}
