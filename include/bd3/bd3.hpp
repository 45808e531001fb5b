#pragma once
// bd3: Block Discrete Denoising Diffusion Language Models (BD3-LMs) in C++.
// The one header users include.
#include <bd3/diffusion/clip_search.hpp>
#include <bd3/diffusion/estimator.hpp>
#include <bd3/diffusion/nelbo.hpp>
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>
#include <bd3/io/json.hpp>
#include <bd3/io/npy.hpp>
#include <bd3/io/parity_cases.hpp>
#include <bd3/io/safetensors.hpp>
#include <bd3/model/checkpoint.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/kv_cache.hpp>
#include <bd3/model/model.hpp>
#include <bd3/model/parameters.hpp>
#include <bd3/policies/attention.hpp>
#include <bd3/policies/block_size.hpp>
#include <bd3/policies/noise.hpp>
#include <bd3/sample/sampler.hpp>
#include <bd3/text/bpe_trainer.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/text/tokenizer.hpp>
#include <bd3/train/backward.hpp>
#include <bd3/train/init.hpp>
#include <bd3/train/optimizer.hpp>
#include <bd3/train/trainer.hpp>
