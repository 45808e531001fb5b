// fuzz_token_cache: the token cache format (text::parse_token_cache; read_token_cache runs the same
// parser on a file): magic, version, fingerprint, sizes, ids below the vocabulary.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::token_cache(bd3::fuzz::as_text(data, size));
  return 0;
}
