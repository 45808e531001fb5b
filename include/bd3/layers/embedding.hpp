#pragma once
// Token embedding, forward and backward.
//   Forward:  x[r, :] = E[tok(r), :]          E [V, D], x [N, D]
//   Backward: dE[tok(r), :] += dx[r, :]       (a token on several rows gets each row's)
#include <algorithm>
#include <cstdint>
#include <vector>

namespace bd3::layers {

// tok(r) -> int32_t: the token of row r in [0, N).
template <class T, class TokenFn>
void embedding_forward(const T* E, int D, int64_t N, TokenFn tok, T* x) {
  for (int64_t r = 0; r < N; ++r) {
    const T* e = E + int64_t(tok(r)) * D;
    std::copy(e, e + D, x + r * D);
  }
}

template <class T>
void embedding_backward(const std::vector<int32_t>& row_tokens, const T* dx, int D, T* dE) {
  // Serial over rows (N D adds): rows sharing a token would race otherwise.
  for (size_t r = 0; r < row_tokens.size(); ++r) {
    T* e = dE + int64_t(row_tokens[r]) * D;
    const T* d = dx + int64_t(r) * D;
    for (int j = 0; j < D; ++j) e[j] += d[j];
  }
}

}  // namespace bd3::layers
