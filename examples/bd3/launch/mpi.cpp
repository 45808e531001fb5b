// The bd3 program built with MPI: under mpirun, `train` and `eval` run as ranks of one
// job (include/bd3/mpi.hpp); alone, MPI never starts.
#include <bd3/mpi.hpp>

#include <memory>

#include "../launch.hpp"

namespace bd3::cli {

namespace {
std::unique_ptr<bd3::mpi::Session> g_session;
std::unique_ptr<bd3::mpi::Group> g_group;
}  // namespace

std::string mpi_text() {
  return "yes (" + bd3::mpi::library_version() + ")";
}

bd3::train::ProcessGroup* launch_group(bool overlap) {
  if (!bd3::mpi::launched_by_mpirun()) return nullptr;
  if (!g_group) {
    g_session = std::make_unique<bd3::mpi::Session>(nullptr, nullptr);
    g_group = std::make_unique<bd3::mpi::Group>();
  }
  g_group->set_overlap(overlap);
  return g_group.get();
}

int launch_rank() {
  return g_group ? g_group->rank() : 0;
}
bool launched_with_others() {
  return g_group && g_group->size() > 1;
}

void abort_launch(int code) {
  if (launched_with_others()) bd3::mpi::Session::abort(code);
}

}  // namespace bd3::cli
