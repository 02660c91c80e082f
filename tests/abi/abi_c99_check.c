/* The ABI header must compile as strict C99 (-pedantic -Werror), and the
 * layout of ABI v1 is pinned here for LP64 targets: if a struct's size or a
 * field's offset changes, this fails to compile. Appending a field changes
 * the size on purpose: then update the pin *and* keep the old offsets. */
#include <mango/plugin.h>

#include <stddef.h>

#define PIN(name, cond) typedef char pin_##name[(cond) ? 1 : -1]

#if defined(__LP64__)
PIN(value, sizeof(mango_value) == 24);
PIN(value_u, offsetof(mango_value, u) == 8);
PIN(host_base, sizeof(mango_host_base) == 24);
PIN(host_base_get_api, offsetof(mango_host_base, get_api) == 16);
PIN(host_api, sizeof(mango_host_api) == 328);
PIN(host_api_weight_shaped, offsetof(mango_host_api, weight_shaped) == 224); /* revision 2 */
PIN(host_api_wants_reports, offsetof(mango_host_api, wants_reports) == 232); /* revision 3 */
PIN(host_api_declare_tensor_v2, offsetof(mango_host_api, declare_tensor_v2) == 264);
PIN(host_api_random_like, offsetof(mango_host_api, random_like) == 272);
PIN(host_api_attention_mask_full, offsetof(mango_host_api, attention_mask_full) == 280); /* revision 4 */
PIN(host_api_expert_shard, offsetof(mango_host_api, expert_shard) == 288);               /* revision 5 */
PIN(host_api_all_to_all, offsetof(mango_host_api, all_to_all) == 296);
PIN(host_api_cache_append, offsetof(mango_host_api, cache_append) == 304);           /* revision 6 */
PIN(host_api_cache_append_pair, offsetof(mango_host_api, cache_append_pair) == 312); /* revision 7 */
PIN(host_api_cache_capacity, offsetof(mango_host_api, cache_capacity) == 320);       /* revision 8 */
PIN(host_api_find_op, offsetof(mango_host_api, find_op) == 120);
PIN(host_api_declare_tensor, offsetof(mango_host_api, declare_tensor) == 216);
PIN(adapter_vtable, sizeof(mango_adapter_vtable) == 40);
PIN(adapter_vtable_destroy, offsetof(mango_adapter_vtable, destroy) == 24);
PIN(adapter_vtable_is_affine, offsetof(mango_adapter_vtable, is_affine) == 32); /* revision 2 */
PIN(router_vtable, sizeof(mango_router_vtable) == 40);
PIN(router_vtable_route_v2, offsetof(mango_router_vtable, route_v2) == 32); /* revision 2 */
PIN(merge_vtable, sizeof(mango_merge_vtable) == 48);
PIN(merge_input, sizeof(mango_merge_input) == 56);
PIN(moe_vtable, sizeof(mango_moe_converter_vtable) == 32);
PIN(dense_ffn, sizeof(mango_dense_ffn) == 120);
PIN(model_info, sizeof(mango_model_info) == 72);
PIN(architecture_vtable, sizeof(mango_architecture_vtable) == 72);
PIN(architecture_vtable_tensors, offsetof(mango_architecture_vtable, tensors) == 64); /* revision 2 */
PIN(tensor_decl, sizeof(mango_tensor_decl) == 48);
PIN(tensor_decl_tied_to, offsetof(mango_tensor_decl, tied_to) == 40);
PIN(component, sizeof(mango_component) == 48);
PIN(component_vtable, offsetof(mango_component, vtable) == 40);
PIN(plugin, sizeof(mango_plugin) == 48);
PIN(plugin_abi, offsetof(mango_plugin, abi_version) == 4);
#endif

/* The fixed constants are part of the ABI too. */
PIN(abi_version, MANGO_ABI_VERSION == 1u);
PIN(dtype_bf16, MANGO_DTYPE_BF16 == 3);
PIN(kind_moe, MANGO_KIND_MOE_CONVERTER == 5);
PIN(value_device, MANGO_VALUE_DEVICE == 10);
PIN(tensor_tied, MANGO_TENSOR_TIED == 2u);

int mango_abi_c99_check(void) { return 0; }
