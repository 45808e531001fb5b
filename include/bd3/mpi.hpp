#pragma once
// Data-parallel training and evaluation over MPI: the train::ProcessGroup of
// train/data_parallel.hpp on an MPI communicator. Only code that includes this header
// needs MPI (CMake: find_package(MPI) and MPI::MPI_CXX, or the exported bd3::mpi).
//
//   bd3::mpi::Session session(&argc, &argv);   // MPI_Init_thread ... MPI_Finalize
//   bd3::mpi::Group group;                      // the ranks of MPI_COMM_WORLD
//   bd3::train::Trainer trainer(std::move(model), options, corpus, &group);
//   bd3::evaluate_nelbo(model, noise, corpus, sequences, eval_options, &group);
//
// Only the thread that created the Session calls MPI (MPI_THREAD_FUNNELED): the trainer
// calls the group between the OpenMP regions of its backward.
//
// The gradient sum is a chain in rank order (data_parallel.hpp), run range by range as the
// backward reports them: rank 0 sends its sum of a range to rank 1, which adds its own and
// passes it on; the last rank broadcasts the total. Each rank sends and receives every
// gradient value about once (plus the broadcast), as a ring all-reduce does, but the sum
// has one order whatever the number of ranks; the price is latency that grows with the
// rank count (N - 1 hops per range, pipelined over the ranges).
#include <bd3/error.hpp>
#include <bd3/train/data_parallel.hpp>

// The C API only: Open MPI's and MPICH's deprecated C++ bindings stay out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <deque>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace bd3::mpi {

namespace detail {

// MPI calls on bd3's communicators return their errors (MPI_ERRORS_RETURN); this turns one
// into an exception naming the call.
inline void check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(code, text, &n);
  throw Error(ErrorKind::io,
              std::string("MPI: ") + call + " failed: " + std::string(text, size_t(n)));
}

inline int count_of(size_t n, const char* what) {
  if (n > size_t(INT_MAX))
    throw Error(ErrorKind::usage, std::string("MPI: ") + what + " of " + std::to_string(n) +
                                      " elements is more than one MPI message holds");
  return int(n);
}

}  // namespace detail

// True when this process was started by an MPI launcher (mpirun, mpiexec, srun with PMI):
// then MPI must be initialized; otherwise a program can stay a single process.
inline bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

// The MPI library's name and version, one line ("Open MPI v4.1.4, ...").
inline std::string library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int n = 0;
  if (MPI_Get_library_version(text, &n) != MPI_SUCCESS) return "unknown";
  std::string s(text, size_t(n));
  if (const auto nl = s.find_first_of("\r\n"); nl != std::string::npos) s.resize(nl);
  return s;
}

// MPI for the life of the object: MPI_Init_thread (funneled) unless MPI is running
// already, MPI_Finalize at the end when it initialized MPI.
class Session {
 public:
  Session(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    int provided = 0;
    detail::check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    owned_ = true;
    if (provided < MPI_THREAD_FUNNELED)
      throw Error(ErrorKind::io, "MPI: the library does not support MPI_THREAD_FUNNELED");
  }
  ~Session() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Finalize();
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Ends every rank of the run at once with `code` as the launcher's exit status: what a
  // rank does on an error the others cannot see (they would wait for it for ever).
  [[noreturn]] static void abort(int code) {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::abort();
  }

 private:
  bool owned_ = false;
};

// The ranks of an MPI communicator (a duplicate of it, so bd3's messages never meet the
// caller's) as a train::ProcessGroup.
class Group final : public train::ProcessGroup {
 public:
  explicit Group(MPI_Comm comm = MPI_COMM_WORLD) {
    detail::check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~Group() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm communicator() const { return comm_; }

  // Off: reduce_ready only records the range and reduce_finish does all the work, after
  // the backward (to measure what the overlap hides).
  void set_overlap(bool on) { overlap_ = on; }

  std::vector<std::string> all_gather(const std::string& bytes) override {
    const int n = detail::count_of(bytes.size(), "an all-gather");
    std::vector<int> counts(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_));
    detail::check(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_), "MPI_Allgather");
    size_t total = 0;
    for (int r = 0; r < size_; ++r) {
      displs[size_t(r)] = detail::count_of(total, "an all-gather");
      total += size_t(counts[size_t(r)]);
    }
    std::string all(total, '\0');
    detail::check(MPI_Allgatherv(bytes.data(), n, MPI_CHAR, all.data(), counts.data(),
                                 displs.data(), MPI_CHAR, comm_),
                  "MPI_Allgatherv");
    std::vector<std::string> out;
    for (int r = 0; r < size_; ++r)
      out.push_back(all.substr(size_t(displs[size_t(r)]), size_t(counts[size_t(r)])));
    return out;
  }

  void sum_disjoint(std::span<double> values) override {
    const int n = detail::count_of(values.size(), "a sum");
    detail::check(MPI_Allreduce(MPI_IN_PLACE, values.data(), n, MPI_DOUBLE, MPI_SUM, comm_),
                  "MPI_Allreduce");
  }

  void reduce_begin(std::span<float> total, train::LocalGradients local) override {
    if (!ranges_.empty()) throw Error(ErrorKind::usage, "MPI: a gradient sum is still running");
    total_ = total;
    local_ = std::move(local);
    if (rank_ + 1 < size_) partial_.resize(total.size());
    next_ = 0;
  }

  // A range travels in pieces, so a large one (the output layer) neither holds the chain's
  // pipeline for long nor needs one huge MPI message. The chain's fill and drain cost about
  // 2 (N - 2) pieces; a piece of P / (16 N) values keeps that near a sixteenth of the 8P
  // bytes each rank moves anyway (docs/performance.md), within [16K, 1M] values.
  int64_t piece_size() const {
    return std::clamp<int64_t>(int64_t(total_.size()) / (16 * int64_t(size_)), int64_t{1} << 14,
                               int64_t{1} << 20);
  }

  void reduce_ready(train::GradientRange range) override {
    if (range.offset < 0 || range.count < 0 || size_t(range.offset + range.count) > total_.size())
      throw Error(ErrorKind::usage, "MPI: a gradient range outside the gradient buffer");
    const int64_t piece = piece_size();
    for (int64_t at = range.offset; at < range.offset + range.count; at += piece) {
      ranges_.push_back({{at, std::min(piece, range.offset + range.count - at)}});
      if (overlap_) post(ranges_.back(), tag_of(ranges_.size() - 1));
    }
    if (overlap_) progress(/*block=*/false);
  }

  double reduce_finish() override {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < ranges_.size(); ++i)
      if (!ranges_[i].posted) post(ranges_[i], tag_of(i));
    progress(/*block=*/true);
    std::vector<MPI_Request> pending;
    for (auto& r : ranges_) pending.push_back(r.send), pending.push_back(r.bcast);
    detail::check(MPI_Waitall(int(pending.size()), pending.data(), MPI_STATUSES_IGNORE),
                  "MPI_Waitall");
    ranges_.clear();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

 private:
  // One range of the chain. Rank 0: its sum goes to rank 1 at once. A middle rank: the
  // partial sum from rank - 1 arrives in partial_, gets the rank's share, goes on to
  // rank + 1. The last rank: the partial arrives in total_, gets its share, and is
  // broadcast; every other rank receives the broadcast into total_.
  struct Range {
    train::GradientRange range;
    bool posted = false;
    MPI_Request recv = MPI_REQUEST_NULL, send = MPI_REQUEST_NULL, bcast = MPI_REQUEST_NULL;
  };

  // Messages between two ranks match in the order they were posted (MPI's non-overtaking
  // rule), so tags only need to tell neighbouring pieces apart; 32767 is the least
  // MPI_TAG_UB an MPI library may have.
  static int tag_of(size_t piece) { return int(piece % 32768); }

  std::span<float> slice(std::span<float> v, const train::GradientRange& r) const {
    return v.subspan(size_t(r.offset), size_t(r.count));
  }

  // Posts a range's first operations; ranges are posted in order, so every rank starts
  // its broadcasts in the same order.
  void post(Range& r, int tag) {
    r.posted = true;
    const int n = detail::count_of(size_t(r.range.count), "a gradient range");
    if (size_ == 1) {
      local_(slice(total_, r.range), r.range, false);
      return;
    }
    const bool last = rank_ + 1 == size_;
    if (rank_ == 0) {
      local_(slice(partial_, r.range), r.range, false);
      detail::check(
          MPI_Isend(slice(partial_, r.range).data(), n, MPI_FLOAT, 1, tag, comm_, &r.send),
          "MPI_Isend");
    } else {
      float* into = last ? slice(total_, r.range).data() : slice(partial_, r.range).data();
      detail::check(MPI_Irecv(into, n, MPI_FLOAT, rank_ - 1, tag, comm_, &r.recv), "MPI_Irecv");
    }
    if (!last)
      detail::check(
          MPI_Ibcast(slice(total_, r.range).data(), n, MPI_FLOAT, size_ - 1, comm_, &r.bcast),
          "MPI_Ibcast");
  }

  // Adds this rank's share to the ranges whose partial sums have arrived, in order; with
  // block, waits for all of them.
  void progress(bool block) {
    const bool last = rank_ + 1 == size_;
    for (; next_ < ranges_.size() && ranges_[next_].posted; ++next_) {
      Range& r = ranges_[next_];
      if (r.recv != MPI_REQUEST_NULL) {
        int arrived = 1;
        if (block) {
          detail::check(MPI_Wait(&r.recv, MPI_STATUS_IGNORE), "MPI_Wait");
        } else {
          detail::check(MPI_Test(&r.recv, &arrived, MPI_STATUS_IGNORE), "MPI_Test");
          if (!arrived) return;
        }
      } else if (rank_ == 0 || size_ == 1) {
        continue;  // rank 0 sent its sum when it posted the range
      }
      const int n = int(r.range.count);
      const int tag = tag_of(next_);
      if (last) {
        local_(slice(total_, r.range), r.range, true);
        detail::check(
            MPI_Ibcast(slice(total_, r.range).data(), n, MPI_FLOAT, rank_, comm_, &r.bcast),
            "MPI_Ibcast");
      } else {
        local_(slice(partial_, r.range), r.range, true);
        detail::check(MPI_Isend(slice(partial_, r.range).data(), n, MPI_FLOAT, rank_ + 1, tag,
                                comm_, &r.send),
                      "MPI_Isend");
      }
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  bool overlap_ = true;
  std::span<float> total_;
  train::LocalGradients local_;
  std::vector<float> partial_;
  std::deque<Range> ranges_;
  size_t next_ = 0;
};

}  // namespace bd3::mpi
