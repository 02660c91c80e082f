// `ties` merge (TIES: magnitude-trimmed task vectors, sign consensus, mean of agreeing ones); mergekit's generalized task arithmetic with
// consensus = sum, sparsification = magnitude. See ../common/merge_common.hpp.
#include "merge_common.hpp"

MANGO_GTA_PLUGIN(ties, "TIES: magnitude-trimmed task vectors, sign consensus, mean of agreeing ones", true, magnitude, true, false, "")
