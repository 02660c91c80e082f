// mango plugins test NAME — instantiate one component on random inputs of the
// right shapes, run it forward and backward, and check its output contract
// (the same checks the runtime makes), so a plugin author can exercise a
// router or adapter alone.
#include "cli.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "abi/plugins.hpp"
#include "model/generate.hpp"
#include "model/model.hpp"
#include "util/error.hpp"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>

namespace mango::cli {
namespace {

using nlohmann::json;

struct Report {
    json j = json::object();
    std::vector<std::string> lines;
    bool ok = true;
    void pass(const std::string &what) { lines.push_back("ok    " + what); }
    void fail(const std::string &what) {
        lines.push_back("FAIL  " + what);
        ok = false;
    }
    // Runs `f`; a thrown error is a failed check named `what`.
    template <class F>
    bool check(const std::string &what, F &&f) {
        try {
            f();
            pass(what);
            return true;
        } catch (const std::exception &e) {
            fail(what + ": " + without_backtrace(e.what()));
            return false;
        }
    }
};

// The parameters with a finite gradient, and those that need one and got none.
void check_gradients(Report &rep, const std::vector<InstanceContext::Parameter> &params) {
    int64_t with = 0, trainable = 0;
    for (const auto &p : params) {
        if (!p.trainable) continue;
        ++trainable;
        if (!p.value.grad().defined()) continue;
        ++with;
        if (!at::isfinite(p.value.grad()).all().item<bool>()) rep.fail("gradient of '" + p.name + "' has non-finite values");
    }
    rep.j["trainable_parameters"] = trainable;
    rep.j["parameters_with_gradient"] = with;
    if (trainable == 0)
        rep.pass("backward (no trainable parameters)");
    else if (with == 0)
        rep.fail("backward: none of the " + std::to_string(trainable) + " trainable parameters got a gradient");
    else
        rep.pass("backward: " + std::to_string(with) + " of " + std::to_string(trainable) + " trainable parameters got a finite gradient");
}

InstanceSpec spec_of(const std::string &name, const po::variables_map &vm) {
    InstanceSpec s;
    s.name = name;
    s.where = "--options";
    s.options = json::object();
    if (vm.count("options")) {
        try {
            s.options = json::parse(vm["options"].as<std::string>());
        } catch (const std::exception &e) {
            throw UsageError(std::string("--options is not valid JSON: ") + e.what());
        }
        if (!s.options.is_object()) throw UsageError("--options must be a JSON object, e.g. '{\"top_k\": 1}'");
    }
    return s;
}

void test_router(Report &rep, const PluginHost &host, const InstanceSpec &spec, int64_t H, int64_t E, int64_t B, int64_t T) {
    std::unique_ptr<RouterInstance> r;
    if (!rep.check("create (hidden " + std::to_string(H) + ", " + std::to_string(E) + " experts)",
                   [&] { r = RouterInstance::create(host, spec, H, E); }))
        return;
    at::manual_seed(0);
    at::Tensor hidden = at::randn({B, T, H}).requires_grad_(true);
    at::Tensor mask = at::ones({B, T}, at::kLong);
    if (T > 2) mask[B - 1].narrow(0, 0, 2).fill_(0);  // a left-padded row
    at::Tensor pos = (mask.cumsum(-1) - 1).clamp_min(0);
    for (bool training : {true, false}) {
        r->train(training);
        RouterOutput out;
        const std::string mode = training ? "training" : "inference";
        if (!rep.check("route in " + mode + " mode: weights of a floating dtype, finite, >= 0, rows summing to 1",
                       [&] { out = r->route(hidden, mask, pos, true); }))
            continue;
        json m = {{"weights_shape", out.weights.sizes().vec()},
                  {"weights_dtype", c10::toString(out.weights.scalar_type())},
                  {"pooled", out.weights.dim() == 2}};
        json losses = json::object(), stats = json::object();
        for (const auto &[n, v] : out.losses) losses[n] = v.detach().to(at::kDouble).item<double>();
        for (const auto &[n, v] : out.stats) {
            const at::Tensor c = v.detach().to(at::kCPU, at::kDouble).reshape({-1}).contiguous();
            stats[n] =
                c.numel() == 1 ? json(c.item<double>()) : json(std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel()));
        }
        m["losses"] = losses;
        m["stats"] = stats;
        rep.j[mode] = m;
        if (!training) continue;
        rep.check("reported losses are finite scalars", [&] {
            for (const auto &[n, v] : out.losses)
                if (!std::isfinite(v.detach().to(at::kDouble).item<double>())) throw std::runtime_error("loss '" + n + "' is not finite");
        });
        at::Tensor objective = (out.weights * at::randn(out.weights.sizes())).sum();
        for (const auto &[_, v] : out.losses) objective = objective + v;
        if (rep.check("backward through the weights and reported losses", [&] { objective.backward(); }))
            check_gradients(rep, r->parameters());
    }
}

void test_adapter(Report &rep, const PluginHost &host, const InstanceSpec &spec, int64_t d_in, int64_t d_out, int64_t B, int64_t T) {
    std::unique_ptr<AdapterInstance> a;
    if (!rep.check("create (" + std::to_string(d_in) + " -> " + std::to_string(d_out) + ")",
                   [&] { a = AdapterInstance::create(host, spec, d_in, d_out); }))
        return;
    at::manual_seed(0);
    at::Tensor x = at::randn({B, T, d_in}).requires_grad_(true);
    a->train(true);
    at::Tensor y;
    if (!rep.check("forward: [B, T, d_out], floating, finite", [&] { y = a->forward(x, true); })) return;
    rep.j["output_shape"] = y.sizes().vec();
    rep.j["affine"] = a->affine();
    if (a->affine()) {
        rep.check("affine as claimed: f(u) - f(v) == f(u - v) - f(0)", [&] {
            at::NoGradGuard no_grad;
            a->train(false);
            at::Tensor u = at::randn({B, T, d_in}), v = at::randn({B, T, d_in});
            const double err = (a->forward(u) - a->forward(v) - a->difference(u, v)).abs().max().item<double>();
            const double scale = a->forward(u).abs().max().item<double>() + 1e-6;
            a->train(true);
            if (err > 1e-4 * scale) throw std::runtime_error("largest difference " + std::to_string(err));
        });
    }
    if (rep.check("backward", [&] { (y * at::randn(y.sizes())).sum().backward(); })) check_gradients(rep, a->parameters());
}

void test_architecture(Report &rep, const PluginHost &host, const std::string &name, const std::string &dir) {
    if (dir.empty())
        throw UsageError(
            "testing an architecture needs --model DIR (a folder with config.json; weights are drawn at random when it has none)");
    std::unique_ptr<Model> m;
    const bool has_weights = std::filesystem::exists(std::filesystem::path(dir) / "model.safetensors") ||
                             std::filesystem::exists(std::filesystem::path(dir) / "model.safetensors.index.json");
    if (!rep.check(std::string(has_weights ? "load " : "initialise at random from ") + dir,
                   [&] { m = has_weights ? Model::load(host, dir) : Model::init_random(host, dir, 0); }))
        return;
    if (m->label().find("'" + name + "'") == std::string::npos) rep.fail(dir + " is handled by " + m->label() + ", not '" + name + "'");
    rep.check("tensor table: " + std::to_string(m->roles().size()) + " tensors declared", [&] {
        if (m->roles().empty()) throw std::runtime_error("the architecture declares no tensors");
    });
    at::manual_seed(0);
    const int64_t V = m->info().vocab_size, B = 2, T = 6;
    at::Tensor ids = at::randint(std::max<int64_t>(1, V), {B, T}, at::kLong);
    at::Tensor mask = at::ones({B, T}, at::kLong);
    mask[1].narrow(0, 0, 2).fill_(0);
    at::Tensor pos = (mask.cumsum(-1) - 1).clamp_min(0);
    at::Tensor full;
    if (!rep.check("forward: logits finite", [&] {
            at::NoGradGuard g;
            full = m->forward(ids, mask, pos);
            check_finite_floating(full, m->label(), "logits");
        }))
        return;
    rep.j["logits_shape"] = full.sizes().vec();
    if (!m->is_causal()) return;
    rep.check("cached decoding equals recomputation", [&] {
        at::NoGradGuard g;
        m->clear_cache();
        at::Tensor a = m->forward(ids.narrow(1, 0, T - 2), mask.narrow(1, 0, T - 2), pos.narrow(1, 0, T - 2), true);
        at::Tensor b = m->forward(ids.narrow(1, T - 2, 2), mask, pos.narrow(1, T - 2, 2), true);
        m->clear_cache();
        const at::Tensor keep = mask.to(at::kBool).unsqueeze(-1);
        const double err = (at::cat({a, b}, 1) - full).abs().masked_fill(~keep, 0).max().item<double>();
        if (err > 1e-4) throw std::runtime_error("largest difference " + std::to_string(err));
    });
    m->set_trainable(true);
    rep.check("backward reaches the weights", [&] {
        m->forward(ids, mask, pos).sum().backward();
        int64_t with = 0;
        for (const auto &[_, t] : m->trainable()) with += t.grad().defined();
        if (with == 0) throw std::runtime_error("no weight got a gradient");
    });
}

int run_tests(const Global &g, const po::variables_map &vm, const PluginHost &host, const std::string &kind, const std::string &name) {
    const int64_t H = vm["hidden"].as<int64_t>(), B = vm["batch"].as<int64_t>(), T = vm["tokens"].as<int64_t>();
    Report rep;
    rep.j["component"] = {{"kind", kind}, {"name", name}, {"library", host.require(kind, name).library}};
    if (kind == "router")
        test_router(rep, host, spec_of(name, vm), H, vm["experts"].as<int64_t>(), B, T);
    else if (kind == "adapter")
        test_adapter(rep, host, spec_of(name, vm), H, vm.count("d-out") ? vm["d-out"].as<int64_t>() : H / 2, B, T);
    else
        test_architecture(rep, host, name, vm.count("model") ? vm["model"].as<std::string>() : "");
    rep.j["ok"] = rep.ok;
    rep.j["checks"] = rep.lines;
    if (g.json) {
        std::cout << rep.j.dump(2) << "\n";
    } else {
        std::cout << kind << " '" << name << "' (" << rep.j["component"]["library"].get<std::string>() << ")\n";
        for (const auto &l : rep.lines) std::cout << "  " << l << "\n";
        std::cout << (rep.ok ? "passed" : "FAILED") << "\n";
    }
    return rep.ok ? 0 : 1;
}

// The sizes of the random inputs: each at least 1 (3 tokens: the cached-decoding check feeds the last two
// after the rest), and small enough for the inputs to stay under 2^28 elements.
void check_sizes(const po::variables_map &vm) {
    auto size = [&](const char *name, int64_t minimum, int64_t maximum) {
        const int64_t v = vm[name].as<int64_t>();
        if (v < minimum || v > maximum)
            throw UsageError(std::string("--") + name + " must be in " + std::to_string(minimum) + ".." + std::to_string(maximum) +
                             ", not " + std::to_string(v));
        return v;
    };
    const int64_t H = size("hidden", 1, 65536), B = size("batch", 1, 4096), T = size("tokens", 3, 65536);
    const int64_t E = size("experts", 1, 4096);
    const int64_t D = vm.count("d-out") ? size("d-out", 1, 65536) : H / 2;
    if (D < 1) throw UsageError("--d-out defaults to half of --hidden, which is 0 here; give --d-out");
    if (B * T * std::max({H, D, E}) > (int64_t(1) << 28))
        throw UsageError("--batch x --tokens x the largest of --hidden, --d-out and --experts is " +
                         std::to_string(B * T * std::max({H, D, E})) + " elements; the test's inputs take at most 2^28 (268435456)");
}

// The tests run in a child process: a component that crashes is reported, and this command survives it.
int plugin_test(const Global &g, const po::variables_map &vm) {
    check_sizes(vm);
    const PluginHost host(registry::Registry::discover(registry_options(g)));
    const std::string name = vm["name"].as<std::string>();
    std::string kind = vm.count("kind") ? vm["kind"].as<std::string>() : "";
    if (kind.empty()) {
        auto found = host.registry().find_by_name(name);
        if (found.empty()) (void)host.require("component", name);  // throws with close names
        if (found.size() > 1) throw UsageError("several components are named '" + name + "'; choose one with --kind");
        kind = found[0]->kind;
    }
    if (kind != "router" && kind != "adapter" && kind != "architecture")
        throw UsageError("plugins test covers routers, adapters and architectures, not " + kind + " components");
    const std::string library = host.require(kind, name).library;
    std::cout.flush();
    std::cerr.flush();
    const pid_t pid = ::fork();
    if (pid < 0) throw HostError(std::string("plugins test: cannot start the test process: ") + std::strerror(errno));
    if (pid == 0) {
        int rc = 1;
        try {
            rc = run_tests(g, vm, host, kind, name);
        } catch (const std::exception &e) {
            std::cerr << "mango: error: " << without_backtrace(e.what()) << "\n";
        }
        std::cout.flush();
        std::cerr.flush();
        ::_exit(rc);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    const int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    const std::string crash = "crashed with signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
    if (g.json)
        std::cout << nlohmann::json{{"component", {{"kind", kind}, {"name", name}, {"library", library}}},
                                    {"ok", false},
                                    {"crashed", crash}}
                         .dump(2)
                  << "\n";
    else
        std::cout << kind << " '" << name << "' (" << library << ")\n  CRASH  the component " << crash
                  << "; in a pipeline it would take the host down with it\nFAILED\n";
    return 1;
}

}  // namespace

std::vector<Command> plugin_test_commands() {
    return {{"plugins test", "NAME [--kind KIND] [--options JSON] [--hidden H] [--experts E] [--model DIR] [--json]",
             "run one component on random inputs, forward and backward, and check its output contract",
             [](po::options_description &d, po::positional_options_description &p) {
                 d.add_options()("name", po::value<std::string>()->required(), "component name")(
                     "kind", po::value<std::string>(), "router|adapter|architecture (when the name is ambiguous)")(
                     "options", po::value<std::string>(), "the component's options as a JSON object")(
                     "hidden", po::value<int64_t>()->default_value(32), "hidden size (routers; adapters' d_in)")(
                     "d-out", po::value<int64_t>(), "adapters: output size (default hidden/2)")(
                     "experts", po::value<int64_t>()->default_value(3), "routers: number of experts")(
                     "batch", po::value<int64_t>()->default_value(2), "sequences per batch")(
                     "tokens", po::value<int64_t>()->default_value(5), "tokens per sequence")(
                     "model", po::value<std::string>(), "architectures: a folder with config.json (and weights, if any)");
                 p.add("name", 1);
             },
             plugin_test}};
}

}  // namespace mango::cli
