#pragma once
// bd3: Block Discrete Denoising Diffusion Language Models (BD3-LMs) in C++.
// Everything: training.hpp (which includes inference.hpp) and the file formats. A program
// that only samples can include <bd3/inference.hpp> instead and compile less.
#include <bd3/io/atomic_file.hpp>
#include <bd3/io/json.hpp>
#include <bd3/io/npy.hpp>
#include <bd3/io/safetensors.hpp>
#include <bd3/training.hpp>
