// A consumer of bd3::mpi: the installed <bd3/mpi.hpp> with MPI found by bd3's package.
// Under mpirun, checks the chained gradient sum against the sum in rank order, bit for bit,
// on ranges that arrive one by one (as a backward reports them), with and without overlap.
#include <bd3/mpi.hpp>

#include <cstdio>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  bd3::mpi::Session session(&argc, &argv);
  bd3::mpi::Group group;
  const int n = group.size(), rank = group.rank();
  const int64_t size = 10007;
  // Rank r's contribution: two "micro-batch" gradients, added in order onto the partial.
  auto gradient = [](int r, int a) {
    std::mt19937 gen(uint32_t(97 * r + a));
    std::uniform_real_distribution<float> u(-1e3f, 1e3f);
    std::vector<float> g(size);
    for (auto& x : g) x = u(gen) * (gen() % 7 == 0 ? 1e-6f : 1.0f);
    return g;
  };
  std::vector<float> expect(size, 0.0f);
  for (int r = 0; r < n; ++r)
    for (int a = 0; a < 2; ++a) {
      const auto g = gradient(r, a);
      for (int64_t i = 0; i < size; ++i)
        expect[size_t(i)] = r == 0 && a == 0 ? g[size_t(i)] : expect[size_t(i)] + g[size_t(i)];
    }
  const auto g0 = gradient(rank, 0), g1 = gradient(rank, 1);
  int bad = 0;
  for (bool overlap : {true, false}) {
    group.set_overlap(overlap);
    std::vector<float> total(size, -1.0f);
    group.reduce_begin(total, [&](std::span<float> dst, bd3::train::GradientRange r, bool onto) {
      for (int64_t i = 0; i < r.count; ++i) {
        const size_t k = size_t(r.offset + i);
        dst[size_t(i)] = onto ? (dst[size_t(i)] + g0[k]) + g1[k] : g0[k] + g1[k];
      }
    });
    // Ranges in a backward's order: the end first, then towards the start.
    for (int64_t end = size; end > 0;) {
      const int64_t begin = end > 3000 ? end - 3000 : 0;
      group.reduce_ready({begin, end - begin});
      end = begin;
    }
    group.reduce_finish();
    for (int64_t i = 0; i < size; ++i) bad += total[size_t(i)] != expect[size_t(i)];
  }
  std::printf("rank %d of %d: %d values differ from the ordered sum\n", rank, n, bad);
  return bad == 0 ? 0 : 1;
}
