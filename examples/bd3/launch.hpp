#pragma once
// How this bd3 process was started: alone, or as one rank of an mpirun. The program is
// built with launch/mpi.cpp when CMake finds MPI and with launch/single.cpp otherwise;
// only `train` and `eval` ask, and only under mpirun does MPI start.
#include <bd3/train/data_parallel.hpp>

#include <string>

namespace bd3::cli {

// "no", or the MPI library this program was built with ("Open MPI v4.1.4 ...").
std::string mpi_text();

// The ranks of the mpirun this process belongs to (MPI starts at the first call), or null
// when it runs alone. With `overlap` false the gradient sum waits for the end of the
// backward (to measure what the overlap hides).
bd3::train::ProcessGroup* launch_group(bool overlap = true);

// The rank of this process (0 when alone), and whether it runs with other ranks.
int launch_rank();
bool launched_with_others();

// On an error under mpirun with other ranks: ends every rank with `code` (they would
// wait for this one for ever). Returns when this process runs alone.
void abort_launch(int code);

}  // namespace bd3::cli
