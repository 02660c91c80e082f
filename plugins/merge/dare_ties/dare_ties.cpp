// `dare_ties` merge (DARE + TIES sign consensus); mergekit's generalized task arithmetic with
// consensus = sum, sparsification = random. See ../common/merge_common.hpp.
#include "merge_common.hpp"

MANGO_GTA_PLUGIN(dare_ties, "DARE + TIES sign consensus", true, random, false, true, "")
