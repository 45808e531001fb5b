#include <bd3/bd3.hpp>

#include <cstdio>

int main() {
  bd3::ModelConfig c;
  c.vocab_size = 11, c.model_length = 8, c.hidden_dim = 8, c.n_heads = 2, c.cond_dim = 4;
  c.n_blocks = 1, c.block_size = 2, c.mask_index = 10;
  bd3::BlockDiffusionModel<bd3::BlockSize<2>, bd3::noise::Cosine, bd3::SimdAttention> model(c);
  std::printf("parameters %lld\n", static_cast<long long>(model.layout().total()));
  return model.layout().total() > 0 ? 0 : 1;
}
