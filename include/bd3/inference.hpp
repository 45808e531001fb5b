#pragma once
// bd3 for inference: the model and its policies, the KV cache, checkpoints, the samplers
// and the tokenizers. A program that only samples or evaluates includes this, not the
// trainer.
#include <bd3/diffusion/estimator.hpp>
#include <bd3/diffusion/evaluate.hpp>
#include <bd3/diffusion/nelbo.hpp>
#include <bd3/error.hpp>
#include <bd3/model/checkpoint.hpp>
#include <bd3/model/config.hpp>
#include <bd3/model/kv_cache.hpp>
#include <bd3/model/model.hpp>
#include <bd3/model/parameters.hpp>
#include <bd3/policies/attention.hpp>
#include <bd3/policies/block_size.hpp>
#include <bd3/policies/noise.hpp>
#include <bd3/sample/sampler.hpp>
#include <bd3/text/tokenizer.hpp>
