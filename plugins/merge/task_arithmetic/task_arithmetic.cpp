// `task_arithmetic` merge (task arithmetic: base + lambda * sum of weighted task vectors); mergekit's generalized task arithmetic with
// consensus = none, sparsification = none. See ../common/merge_common.hpp.
#include "merge_common.hpp"

MANGO_GTA_PLUGIN(task_arithmetic, "task arithmetic: base + lambda * sum of weighted task vectors", false, none, false, false, "")
