#pragma once
// What an attention backend provides. A backend is one type, in a header of its own (the
// built-in ones: policies/attention/*.hpp; a user's may live in the user's file), with
//   name                       a std::string_view constant (printed in logs and bench);
//   forward(args, mask)        static, for every mask the model uses: TrainingMask
//                              (training and evaluation over [xt, x0], or over the xt
//                              rows alone at B' = L: nq = nk = L or 2L per sequence),
//                              BandedBlockCausalMask (the uncached reference) and
//                              DecodeMask (KV-cached decode); writes args.out, and args.lse
//                              when it is not null (the training forward asks for it);
// and, to train with it,
//   backward(grad_args, mask)  static, for TrainingMask: accumulates dq, dk, dv.
// A backend that computes in one scalar type only constrains its forward to it; the model
// then refuses other scalar types with one readable static_assert.
#include <bd3/layers/attention.hpp>
#include <bd3/layers/attention_backward.hpp>

#include <concepts>
#include <string_view>

namespace bd3 {

template <class A, class T = float>
concept AttentionBackend = requires(const AttentionArgs<T>& args, const TrainingMask& training,
                                    const BandedBlockCausalMask& banded, const DecodeMask& decode) {
  { A::name } -> std::convertible_to<std::string_view>;
  A::forward(args, training);
  A::forward(args, banded);
  A::forward(args, decode);
};

// A backend the trainer can use: it has a backward for the training mask.
template <class A, class T = float>
concept TrainableAttention = AttentionBackend<A, T> &&
    requires(const AttentionGradArgs<T>& grad, const TrainingMask& mask) {
  A::backward(grad, mask);
};

}  // namespace bd3
