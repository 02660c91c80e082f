#include "model/generate.hpp"

#include "kernels/fused_ops.hpp"
#include "model/decode_graph.hpp"
#include "util/error.hpp"
#include "util/logging.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <memory>
#include <thread>

namespace mango {
namespace {

// Tokens banned at the next step because they would repeat an n-gram.
std::vector<int64_t> banned_by_ngrams(const std::vector<int64_t> &seq, int64_t n) {
    std::vector<int64_t> banned;
    if (n <= 0 || static_cast<int64_t>(seq.size()) < n) return banned;
    const size_t len = seq.size(), prefix = static_cast<size_t>(n - 1);
    for (size_t start = 0; start + prefix < len; ++start) {
        if (std::equal(seq.begin() + start, seq.begin() + start + prefix, seq.end() - prefix)) banned.push_back(seq[start + prefix]);
    }
    return banned;
}

// The greedy pick of each row on the logits' device ([B] indices): ATen's argmax order, CPU logits in float32.
at::Tensor greedy_tokens(const at::Tensor &logits) { return kernels::greedy_pick(logits.is_cuda() ? logits : logits.to(at::kFloat)); }

}  // namespace

std::vector<int64_t> choose_next(const at::Tensor &logits_in, const std::vector<std::vector<int64_t>> &history, const GenerateOptions &o,
                                 at::Generator &gen) {
    if (o.greedy && o.no_repeat_ngram_size <= 0) {  // on the logits' device: B indices come back, not B x V logits
        const at::Tensor best = greedy_tokens(logits_in).cpu();
        return std::vector<int64_t>(best.data_ptr<int64_t>(), best.data_ptr<int64_t>() + best.numel());
    }
    at::Tensor logits = logits_in.to(at::kCPU, at::kFloat).clone();
    const float lowest = -std::numeric_limits<float>::infinity();
    if (o.no_repeat_ngram_size > 0)
        for (int64_t b = 0; b < logits.size(0); ++b)
            for (int64_t t : banned_by_ngrams(history[static_cast<size_t>(b)], o.no_repeat_ngram_size)) logits[b][t] = lowest;
    std::vector<int64_t> next(static_cast<size_t>(logits.size(0)));
    if (o.greedy) {
        at::Tensor best = logits.argmax(-1);
        for (size_t b = 0; b < next.size(); ++b) next[b] = best[static_cast<int64_t>(b)].item<int64_t>();
        return next;
    }
    // HF order: temperature, then top-k, then top-p.
    if (o.temperature != 1.0) logits = logits / o.temperature;
    if (o.top_k > 0 && o.top_k < logits.size(-1)) {
        at::Tensor kth = std::get<0>(logits.topk(o.top_k, -1)).select(-1, o.top_k - 1).unsqueeze(-1);
        logits = logits.masked_fill(logits < kth, lowest);
    }
    if (o.top_p < 1.0) {
        auto [sorted, idx] = logits.sort(-1, /*descending=*/false);
        at::Tensor cum = sorted.softmax(-1).cumsum(-1);
        at::Tensor remove = cum <= (1.0 - o.top_p);
        remove.select(-1, remove.size(-1) - 1).fill_(false);  // keep at least the best token
        logits = logits.scatter(-1, idx, sorted.masked_fill(remove, lowest));
    }
    at::Tensor picked = at::multinomial(logits.softmax(-1), 1, false, gen);
    for (size_t b = 0; b < next.size(); ++b) next[b] = picked[static_cast<int64_t>(b)][0].item<int64_t>();
    return next;
}

namespace {

// The decode mode generate() uses for `model`: options.decode, or with
// "auto" the MANGO_DECODE variable, else "graph" on a GPU and "eager"
// elsewhere (the growing cache; static shapes buy nothing on a CPU).
std::string decode_mode(const GenerateOptions &o, const CausalLM &model) {
    std::string mode = o.decode;
    if (mode == "auto") {
        const char *env = std::getenv("MANGO_DECODE");
        mode = env && *env ? env : "graph";
    }
    if (mode != "graph" && mode != "static" && mode != "eager")
        throw HostError("decode mode \"" + clip(mode) + "\" unknown (graph, static, eager or auto; from MANGO_DECODE or options)");
    if (!o.use_cache || (!model.device().is_cuda() && o.decode == "auto")) return "eager";
    return mode;
}

// One token per step over a static KV cache: the step's inputs live in
// tensors of fixed shape updated in place (the token, its position, the
// mask with one column per cache entry, the entry written), so every step
// is the same computation, and with `graphs` the second step is captured as
// a CUDA graph and later steps replay it (the first warms up on the capture
// stream). A step that cannot be captured is logged once and runs eagerly.
class StaticDecoder {
public:
    StaticDecoder(CausalLM &model, const at::Tensor &mask, const at::Tensor &pos, int64_t capacity, bool graphs, std::string *used)
        : model_(model), entry_(mask.size(1)), graphs_(graphs && model.graph_safe() && model.graph_refusal().empty()), used_(used) {
        if (graphs && !model.graph_safe())
            log_message(2, model.describe() + ": offloaded weights move between steps, which a CUDA graph cannot follow; decoding eagerly");
        else if (graphs && !graphs_)
            log_message(
                1, model.describe() + ": decoding eagerly (a decode step could not be captured before: " + model.graph_refusal() + ")");
        const int64_t B = mask.size(0);
        mask_ = at::zeros({B, capacity}, mask.options());
        mask_.narrow(1, 0, mask.size(1)).copy_(mask);
        pos_ = pos.narrow(1, pos.size(1) - 1, 1).clone();
        ids_ = at::zeros({B, 1}, pos.options());
    }

    // Logits [B, V] after `col` [B, 1] (on the model's device).
    at::Tensor step(const at::Tensor &col) {
        ids_.copy_(col);
        pos_.add_(1);
        mask_.narrow(1, entry_, 1).fill_(1);
        model_.decode_at(entry_++);
        auto forward = [this] { return model_.logits(ids_, mask_, pos_, true); };
        if (graph_.captured()) return graph_.replay().select(1, 0);
        if (!graphs_) return forward().select(1, 0);
        if (steps_++ == 0) return graph_.warm_up(forward, model_.device()).select(1, 0);
        std::string why;
        if (graph_.capture(forward, model_.device(), why)) {
            if (used_) *used_ = "graph";
            return graph_.replay().select(1, 0);
        }
        graphs_ = false;
        model_.refuse_graphs(why);
        log_message(2, model_.describe() + ": a decode step cannot be captured as a CUDA graph (" + why + "); decoding eagerly");
        return forward().select(1, 0);
    }

private:
    CausalLM &model_;
    at::Tensor ids_, pos_, mask_;
    int64_t entry_;
    bool graphs_;
    int64_t steps_ = 0;
    std::string *used_;  // GenerateOptions::decode_used
    DecodeGraph graph_;
};

// A step's tokens ([B]) for the rows still going: appended to out (and to history where given),
// streamed, and a stop id ends its row. Whether every row has now stopped.
bool take_tokens(const int64_t *tokens, std::vector<bool> &done, const GenerateOptions &o, std::vector<std::vector<int64_t>> &out,
                 std::vector<std::vector<int64_t>> *history) {
    bool all_done = true;
    for (size_t i = 0; i < done.size(); ++i) {
        if (!done[i]) {
            out[i].push_back(tokens[i]);
            if (history) (*history)[i].push_back(tokens[i]);
            if (o.on_token) o.on_token(i, tokens[i]);
            if (std::find(o.stop_ids.begin(), o.stop_ids.end(), tokens[i]) != o.stop_ids.end()) done[i] = true;
        }
        all_done = all_done && done[i];
    }
    return all_done;
}

// Greedy decoding over the static cache, one step ahead of the host: each step's tokens are picked on
// the device and fed to the next step there (rows already stopped get pad_id, a stop id ends its row),
// so step k + 1 is queued before the host reads step k's tokens (copied out beside it) and the device
// never waits on the host between steps. The same tokens, stops and on_token calls as choose_next and
// the loop in generate(); where every row stops, the step queued ahead is computed and thrown away
// (it may be the step captured as a graph, so decode_used can say "graph" where the loop says "static").
void greedy_one_step_ahead(StaticDecoder &fixed, const at::Tensor &first_logits, const GenerateOptions &o,
                           std::vector<std::vector<int64_t>> &out) {
    const at::Device dev = first_logits.device();
    const int64_t B = first_logits.size(0);
    const auto longs = at::TensorOptions().dtype(at::kLong).device(dev);
    const at::Tensor stops = at::tensor(o.stop_ids, at::kLong).to(dev), pad = at::scalar_tensor(o.pad_id, longs);
    at::Tensor done = at::zeros({B}, longs.dtype(at::kBool)), tokens = greedy_tokens(first_logits);
    // Where the host reads a step's tokens: pinned memory the device copies into without stopping the stream.
    at::Tensor host = dev.is_cuda() ? at::empty({B}, at::TensorOptions().dtype(at::kLong).pinned_memory(true)) : at::Tensor();
    c10::Event copied(dev.type());
    std::vector<bool> done_host(static_cast<size_t>(B), false);
    for (int64_t step = 0; step < o.max_new_tokens; ++step) {
        if (cancel_requested()) throw HostError("generation cancelled");
        const at::Tensor col = at::where(done, pad, tokens);  // this step's tokens as fed back
        if (dev.is_cuda()) {
            host.copy_(col, /*non_blocking=*/true);
            copied.record(c10::impl::VirtualGuardImpl(dev.type()).getStream(dev));
        } else {
            host = col.to(at::kCPU);
        }
        if (step + 1 < o.max_new_tokens) {  // queue the next step before reading this one's tokens
            if (!o.stop_ids.empty()) done = done.logical_or(at::isin(col, stops));
            tokens = greedy_tokens(fixed.step(col.reshape({B, 1})));
        }
        while (!copied.query()) std::this_thread::yield();
        if (take_tokens(host.data_ptr<int64_t>(), done_host, o, out, nullptr)) break;
    }
}

}  // namespace

std::vector<std::vector<int64_t>> generate(CausalLM &model, const std::vector<std::vector<int64_t>> &prompts, const GenerateOptions &o) {
    if (!model.is_causal()) throw HostError(model.describe() + " is an encoder model; generation needs a causal LM");
    if (prompts.empty()) return {};
    const int64_t B = static_cast<int64_t>(prompts.size());
    int64_t L = 0;
    for (const auto &p : prompts) {
        if (p.empty()) throw HostError("generate: a prompt is empty (it needs at least one token)");
        L = std::max<int64_t>(L, static_cast<int64_t>(p.size()));
    }
    at::Tensor ids = at::full({B, L}, o.pad_id, at::kLong), mask = at::zeros({B, L}, at::kLong);
    std::vector<std::vector<int64_t>> history(prompts.size()), out(prompts.size());
    for (int64_t b = 0; b < B; ++b) {
        const auto &p = prompts[static_cast<size_t>(b)];
        const int64_t off = L - static_cast<int64_t>(p.size());
        for (size_t t = 0; t < p.size(); ++t) {
            ids[b][off + static_cast<int64_t>(t)] = p[t];
            mask[b][off + static_cast<int64_t>(t)] = 1;
        }
        history[static_cast<size_t>(b)] = p;
    }
    ids = ids.to(model.device());
    mask = mask.to(model.device());
    at::Tensor pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1);
    at::Generator gen = at::detail::createCPUGenerator(o.seed);
    std::vector<bool> done(prompts.size(), false);

    at::NoGradGuard no_grad;
    model.clear_cache();
    struct ClearAtEnd {  // however generation ends (a stop, an error, a cancel): no cache stays allocated
        CausalLM &m;
        ~ClearAtEnd() { m.clear_cache(); }
    } clear_at_end{model};
    const std::string mode = decode_mode(o, model);
    // A multiple of 16 entries: the attention kernels want the mask's rows 16-byte aligned and would
    // otherwise pad a copy of it in every layer of every step (the extra entries stay masked).
    const int64_t capacity = (L + o.max_new_tokens + 15) / 16 * 16;
    if (mode != "eager") model.begin_static_cache(capacity);
    at::Tensor logits = model.logits(ids, mask, pos, o.use_cache).select(1, L - 1);
    std::unique_ptr<StaticDecoder> fixed;
    if (mode != "eager") {
        if (model.static_cache_ready())
            fixed = std::make_unique<StaticDecoder>(model, mask, pos, capacity, mode == "graph", o.decode_used);
        else  // the prefill filled what it could; the rest grows as before
            log_message(2, model.describe() + ": a block keeps a growing KV cache (a sliding window shorter than the static cache's " +
                               std::to_string(capacity) +
                               " entries, or a plugin built before host API revision 6): decoding without the static cache");
    }
    if (o.decode_used) *o.decode_used = fixed ? "static" : "eager";  // "graph" once a step is captured
    if (fixed && o.greedy && o.no_repeat_ngram_size <= 0) {
        greedy_one_step_ahead(*fixed, logits, o, out);
        return out;
    }
    for (int64_t step = 0; step < o.max_new_tokens; ++step) {
        if (cancel_requested()) throw HostError("generation cancelled");
        std::vector<int64_t> next = choose_next(logits, history, o, gen);
        std::vector<int64_t> col_ids(static_cast<size_t>(B));  // fed back: pad_id for the rows that had stopped
        for (size_t i = 0; i < col_ids.size(); ++i) col_ids[i] = done[i] ? o.pad_id : next[i];
        if (take_tokens(col_ids.data(), done, o, out, &history) || step + 1 == o.max_new_tokens) break;
        const at::Tensor col = at::tensor(col_ids, at::kLong).reshape({B, 1}).to(model.device());
        if (fixed) {
            logits = fixed->step(col);
            continue;
        }
        ids = at::cat({ids, col}, 1);
        mask = at::cat({mask, at::ones({B, 1}, mask.options())}, 1);
        pos = at::cat({pos, pos.select(1, pos.size(1) - 1).unsqueeze(1) + 1}, 1);
        if (o.use_cache) {
            logits = model.logits(col, mask, pos.narrow(1, pos.size(1) - 1, 1), true).select(1, 0);
        } else {
            logits = model.logits(ids, mask, pos, false).select(1, ids.size(1) - 1);
        }
    }
    return out;
}

}  // namespace mango
