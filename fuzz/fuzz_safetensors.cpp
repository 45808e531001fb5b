// fuzz_safetensors: io::SafetensorsFile::parse on arbitrary bytes (length prefix, JSON header,
// dtypes, shapes, data_offsets), every tensor loaded, and the F32 rewrite round trip.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::safetensors(bd3::fuzz::as_text(data, size));
  return 0;
}
