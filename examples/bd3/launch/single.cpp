// The bd3 program built without MPI: every process runs alone.
#include "../launch.hpp"

#include <bd3/error.hpp>

#include <cstdlib>

namespace bd3::cli {

std::string mpi_text() {
  return "no";
}

bd3::train::ProcessGroup* launch_group(bool) {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
    if (const char* n = std::getenv(v); n && std::string(n) != "1")
      fail_usage(
          "this bd3 was built without MPI: it cannot run as one of several mpirun ranks "
          "(install libopenmpi-dev and rebuild)");
  return nullptr;
}

int launch_rank() {
  return 0;
}
bool launched_with_others() {
  return false;
}
void abort_launch(int) {}

}  // namespace bd3::cli
