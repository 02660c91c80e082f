// `dare_linear` merge (DARE: randomly dropped, rescaled task vectors, summed); mergekit's generalized task arithmetic with
// consensus = none, sparsification = random. See ../common/merge_common.hpp.
#include "merge_common.hpp"

MANGO_GTA_PLUGIN(dare_linear, "DARE: randomly dropped, rescaled task vectors, summed", false, random, false, true, "")
