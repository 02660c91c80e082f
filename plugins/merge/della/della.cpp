// `della` merge (DELLA: magnitude-ranked random drop (MagPrune) + TIES sign consensus); mergekit's generalized task arithmetic with
// consensus = sum, sparsification = della. See ../common/merge_common.hpp.
#include "merge_common.hpp"

MANGO_GTA_PLUGIN(della, "DELLA: magnitude-ranked random drop (MagPrune) + TIES sign consensus", true, della, true, true, MANGO_GTA_EPSILON)
