// fuzz_cases_json: the parity cases.json (io::parse_parity_cases_text) against the b4 fixture's
// config.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::cases_json(bd3::fuzz::as_text(data, size));
  return 0;
}
