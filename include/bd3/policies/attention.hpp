#pragma once
// The attention backends. All compute the same masked softmax attention
// (layers/attention.hpp); they differ in how (each header says). A backend of one's own
// is a type that satisfies AttentionBackend (policies/attention_backend.hpp; see
// docs/extending.md).
#include <bd3/policies/attention/block_sparse.hpp>
#include <bd3/policies/attention/scalar.hpp>
#include <bd3/policies/attention/simd.hpp>
#include <bd3/policies/attention_backend.hpp>
