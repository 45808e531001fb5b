#pragma once
// bd3: Block Discrete Denoising Diffusion Language Models (BD3-LMs) in C++.
// The one header users include.
#include <bd3/error.hpp>
#include <bd3/io/atomic_file.hpp>
