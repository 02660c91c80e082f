// `breadcrumbs_ties` merge (Model Breadcrumbs + TIES sign consensus); mergekit's generalized task arithmetic with
// consensus = sum, sparsification = magnitude_outliers. See ../common/merge_common.hpp.
#include "merge_common.hpp"

MANGO_GTA_PLUGIN(breadcrumbs_ties, "Model Breadcrumbs + TIES sign consensus", true, magnitude_outliers, false, false, MANGO_GTA_GAMMA)
