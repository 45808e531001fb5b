#pragma once
// bd3 for training: inference.hpp, plus the backward pass, AdamW, initialisation, the
// trainer and its checkpoints, the corpus pipeline and BPE training.
#include <bd3/diffusion/clip_search.hpp>
#include <bd3/inference.hpp>
#include <bd3/text/bpe_trainer.hpp>
#include <bd3/text/corpus.hpp>
#include <bd3/train/backward.hpp>
#include <bd3/train/init.hpp>
#include <bd3/train/optimizer.hpp>
#include <bd3/train/trainer.hpp>
