#pragma once
// Data-parallel training: the contract between the trainer and a process group (MPI in
// <bd3/mpi.hpp>; nothing here needs MPI).
//
// N ranks run one training run. A step's M micro-batches (TrainOptions::accumulate, the
// whole run's count) are split in rank order: rank r computes micro-batches r*A .. r*A+A-1
// with A = M / N, and micro-batch m draws the same sequences, noise and dropout as
// micro-batch m of one process with accumulate M. The step's gradient is the sum over m in
// one fixed order,
//
//   G = ((g_0 + g_1) + g_2) + ... + g_{M-1}      (then G * (1/M), clipping, AdamW)
//
// where g_m is micro-batch m's gradient computed into a zeroed buffer. One process
// computes exactly this; N ranks compute it as a chain in rank order: rank 0 forms
// (g_0 + ... + g_{A-1}), rank r adds its A gradients one by one onto the partial sum it
// receives from rank r-1, and the last rank's result is broadcast. Every rank then holds
// the same bits, and so the same weights and optimizer state, as the single process with
// the same per-rank thread count (a backward's bits depend on its thread count, see
// docs/design.md). The chain runs range by range (a DiT block's parameters, the output
// layer, the embedding and conditioning) while the backward of the last micro-batch
// produces the next range.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace bd3::train {

// A contiguous range [offset, offset + count) of the flat parameter / gradient buffer.
struct GradientRange {
  int64_t offset = 0, count = 0;
};

// Called by backward() each time a range of its gradient buffer is final for that backward
// (the output layer first, then the DiT blocks last to first, then the embedding and the
// conditioning MLP). Every range is reported exactly once and the ranges tile the buffer.
using GradientReady = std::function<void(GradientRange)>;

// One rank's share of a step's gradient sum: writes it into dst (the slice of `range`).
// With onto_partial false, dst receives this rank's own ordered sum (rank 0); with
// onto_partial true, dst holds the sum of the ranks before it and the rank's micro-batch
// gradients are added onto it one at a time, in micro-batch order.
using LocalGradients =
    std::function<void(std::span<float> dst, GradientRange range, bool onto_partial)>;

// The ranks of one run and the collective operations the trainer and evaluate_nelbo need.
// A run-time object (mpirun, not the compiler, decides how many ranks there are); every
// call is collective: each rank makes the same calls in the same order.
class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Every rank's bytes, in rank order, on every rank.
  virtual std::vector<std::string> all_gather(const std::string& bytes) = 0;
  // Elementwise sum over ranks where, for each element, at most one rank holds a nonzero
  // value: exact whatever order the sum runs in.
  virtual void sum_disjoint(std::span<double> values) = 0;
  // The chained gradient sum of one step (see the top of the file): reduce_begin before
  // the backward of the rank's last micro-batch, reduce_ready for each range that backward
  // completes, reduce_finish to wait until `total` holds G on every rank. Returns the
  // seconds reduce_finish spent waiting (communication the backward did not hide).
  virtual void reduce_begin(std::span<float> total, LocalGradients local) = 0;
  virtual void reduce_ready(GradientRange range) = 0;
  virtual double reduce_finish() = 0;
};

}  // namespace bd3::train
