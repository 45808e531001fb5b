// fuzz_trainer_state: each input as trainer_state.json (TrainerState::from_json + to_json round
// trip), checkpoint.json (train::parse_checkpoint_pointer) and trainer_state.safetensors
// (train::read_trainer_tensors into a tiny model's layout).
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bd3::fuzz::trainer_state(bd3::fuzz::as_text(data, size));
  return 0;
}
