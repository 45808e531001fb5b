#include <bd3/bd3.hpp>

#include <xsimd/xsimd.hpp>

#include <cstdio>

int main() {
  bd3::ModelConfig c;
  c.vocab_size = 11, c.model_length = 8, c.hidden_dim = 8, c.n_heads = 2, c.cond_dim = 4;
  c.n_blocks = 1, c.mask_index = 10;  // block size: the type's
  bd3::BlockDiffusionModel<bd3::BlockSize<2>, bd3::SimdAttention> model(c);
  std::printf("parameters %lld, SIMD %s\n", static_cast<long long>(model.layout().total()),
              xsimd::default_arch::name());
  // bd3::native carries the machine's SIMD level to the consumer: the kernels must be
  // compiled for the best instruction set this CPU runs.
  if (xsimd::default_arch::version() < xsimd::available_architectures().best) {
    std::printf("the consumer was compiled for %s but this CPU runs better\n",
                xsimd::default_arch::name());
    return 1;
  }
  return model.layout().total() > 0 ? 0 : 1;
}
