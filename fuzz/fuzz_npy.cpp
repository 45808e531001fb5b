// fuzz_npy: io::read_npy on arbitrary bytes (magic, version, header length, the header's
// Python dict: descr, fortran_order, shape; the data size against the shape), and the
// write_npy round trip of what it accepts.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::npy(bd3::fuzz::as_text(data, size));
  return 0;
}
