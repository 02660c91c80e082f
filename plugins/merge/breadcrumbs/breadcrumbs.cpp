// `breadcrumbs` merge (Model Breadcrumbs: task vectors without their smallest and largest magnitudes); mergekit's generalized task
// arithmetic with consensus = none, sparsification = magnitude_outliers. See ../common/merge_common.hpp.
#include "merge_common.hpp"

MANGO_GTA_PLUGIN(breadcrumbs, "Model Breadcrumbs: task vectors without their smallest and largest magnitudes", false, magnitude_outliers,
                 false, false, MANGO_GTA_GAMMA)
