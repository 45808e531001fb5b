// The README's library example: load a checkpoint and sample from it with bd3::sample::Sampler.
// Usage: readme_sample MODEL_DIR   (config.json + model.safetensors, and a tokenizer if the
// directory has one: tokenizer.json, or vocab.json + merges.txt)
// [readme]
#include <bd3/inference.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>

using Model = bd3::BlockDiffusionModel<bd3::BlockSize<bd3::dynamic>, bd3::BlockSparseAttention>;

int main(int argc, char** argv) {
  if (argc != 2) return std::fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]), 2;
  const std::filesystem::path dir = argv[1];

  auto ck = bd3::load_checkpoint(dir);  // config.json + model.safetensors
  Model model(ck.config);
  std::ranges::copy(ck.parameters, model.parameters().begin());
  model.parameters_changed();  // conditioning and adaLN modulations

  model.set_decode_weights(bd3::DecodeWeights::f32_packed);  // optional: faster decode calls

  bd3::sample::SamplerOptions options;
  options.method = bd3::sample::Method::first_hitting;  // one token revealed per model call
  options.length = 256;                                 // tokens, BOS included
  options.top_p = 0.9;                                  // nucleus sampling
  options.seed = 1;
  bd3::sample::Sampler<Model> sampler(model, options);  // KV cache and fused commits by default
  const auto results = sampler.generate();

  const auto& ids = results.at(0).ids;
  std::printf("%lld tokens, %lld model calls\n", (long long)ids.size(),
              (long long)results.at(0).nfe);
  if (std::filesystem::exists(dir / "tokenizer.json") ||
      std::filesystem::exists(dir / "vocab.json"))
    std::printf("%s\n", bd3::text::Tokenizer::load_from(dir).decode(ids).c_str());
}
// [readme]
