/* A plugin that names its one component after its own file, so one build
 * copied N times is N distinct plugins (bench_plugins_list.sh). */
#define _GNU_SOURCE
#include <mango/plugin.h>

#include <dlfcn.h>
#include <string.h>

static char name[64] = "clone";
static mango_status c_create(mango_context *ctx, int64_t d_in, int64_t d_out, void **self) {
    (void)ctx, (void)d_in, (void)d_out;
    *self = name;
    return MANGO_OK;
}
static mango_status c_forward(void *self, mango_context *ctx, mango_tensor x, mango_tensor *y) {
    (void)self, (void)ctx, (void)x, (void)y;
    return MANGO_ERR_UNSUPPORTED;
}
static void c_destroy(void *self) { (void)self; }
static const mango_adapter_vtable kTable = {sizeof(mango_adapter_vtable), c_create, c_forward, c_destroy, NULL};
static mango_component components[1] = {{sizeof(mango_component), MANGO_KIND_ADAPTER, name, "1.0.0", "benchmark clone", NULL, &kTable}};
static const mango_plugin kPlugin = {sizeof(mango_plugin), MANGO_ABI_VERSION, "clone", "1.0.0", "benchmark clone", 1, components};

MANGO_EXPORT const mango_plugin *mango_plugin_entry_v1(const mango_host_base *base) {
    Dl_info info;
    (void)base;
    if (dladdr((void *)&mango_plugin_entry_v1, &info) && info.dli_fname) {
        const char *file = strrchr(info.dli_fname, '/');
        size_t n = 0;
        file = file ? file + 1 : info.dli_fname;
        while (file[n] && file[n] != '.' && n + 1 < sizeof name) {
            name[n] = (file[n] >= 'a' && file[n] <= 'z') || (file[n] >= '0' && file[n] <= '9') ? file[n] : '_';
            ++n;
        }
        name[n] = '\0';
    }
    return &kPlugin;
}
