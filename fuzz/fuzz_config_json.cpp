// fuzz_config_json: config.json text -> bd3::parse_config_json (ModelConfig::from_json + validate),
// the ParameterLayout it implies, and the to_json round trip.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::config_json(bd3::fuzz::as_text(data, size));
  return 0;
}
