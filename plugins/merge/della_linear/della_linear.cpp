// `della_linear` merge (DELLA MagPrune without sign consensus); mergekit's generalized task arithmetic with
// consensus = none, sparsification = della. See ../common/merge_common.hpp.
#include "merge_common.hpp"

MANGO_GTA_PLUGIN(della_linear, "DELLA MagPrune without sign consensus", false, della, false, true, MANGO_GTA_EPSILON)
