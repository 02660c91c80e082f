// `mango run --nproc N`: starts N copies of this very command line as the
// ranks of one local group (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT set as torchrun sets them; only rank 0 keeps stdout), waits,
// and stops the others when one fails.
#pragma once

namespace mango::cli {

// Exit status: 0 when every rank succeeded, else the first failing rank's
// (128 + signal for a killed one), after a line naming that rank.
int launch_local_ranks(int nproc);

}  // namespace mango::cli
