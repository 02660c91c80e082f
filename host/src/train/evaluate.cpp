#include "train/evaluate.hpp"

#include "train/train.hpp"

#include <map>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <sstream>

namespace mango {

EvalResult evaluate(CausalLM &model, const at::Tensor &seqs, int64_t batch_size) {
    if (seqs.dim() != 2 || seqs.size(0) == 0) throw HostError("evaluation needs at least one sequence");
    at::NoGradGuard no_grad;
    model.train(false);
    model.set_reporting(true);  // plugins' statistics go to metrics.json
    model.clear_cache();
    EvalResult r;
    double nll_sum = 0;
    std::vector<at::Tensor> weights;  // per batch: [layers, B, E]
    std::map<std::string, std::vector<double>> stat_sums;
    int64_t batches = 0;
    try {
        for (int64_t s = 0; s < seqs.size(0); s += batch_size) {
            at::Tensor ids = seqs.narrow(0, s, std::min(batch_size, seqs.size(0) - s)).to(model.device());
            at::Tensor mask = at::ones_like(ids);
            at::Tensor pos = at::arange(ids.size(1), ids.options()).unsqueeze(0).expand_as(ids);
            at::Tensor logits = model.logits(ids, mask, pos, false);
            const int64_t n = ids.size(0) * (ids.size(1) - 1);
            nll_sum += lm_loss(logits, ids, mask).item<double>() * double(n);
            r.tokens += n;
            ++batches;
            const auto &reports = model.layer_reports();
            for (const auto &[k, v] : report_stats(reports)) {
                auto &sum = stat_sums[k];
                if (sum.size() != v.size()) sum.assign(v.size(), 0.0);
                for (size_t i = 0; i < v.size(); ++i) sum[i] += v[i];
            }
            if (reports.empty() || !reports[0].weights.defined()) continue;  // routing weights: fusions
            std::vector<at::Tensor> per_layer;
            for (const auto &st : reports) {
                at::Tensor w = st.weights;  // per token: the mean over the sequence's real tokens
                if (w.dim() == 3) {
                    const at::Tensor keep = st.mask.to(w.dtype()).unsqueeze(-1);
                    w = (w * keep).sum(1) / keep.sum(1).clamp_min(1);
                }
                per_layer.push_back(w.to(at::kCPU, at::kFloat));
            }
            weights.push_back(at::stack(per_layer));
        }
    } catch (...) {
        model.set_reporting(false);
        throw;
    }
    model.set_reporting(false);
    r.sequences = seqs.size(0);
    r.nll = nll_sum / double(std::max<int64_t>(1, r.tokens));
    r.perplexity = std::exp(r.nll);
    for (auto &[k, v] : stat_sums) {
        for (double &x : v) x /= double(std::max<int64_t>(1, batches));
        r.stats[k] = v;
    }
    if (!weights.empty()) r.router_weights = at::cat(weights, 1);
    return r;
}

namespace {

std::string escape(const std::string &s) {
    std::string o;
    for (char c : s) {
        if (c == '<')
            o += "&lt;";
        else if (c == '>')
            o += "&gt;";
        else if (c == '&')
            o += "&amp;";
        else if (c == '"')
            o += "&quot;";
        else
            o += c;
    }
    return o;
}

// Diverging around the uniform weight 1/E: white there, deepening to orange
// as an expert gets more than its share (1 = all), to blue as it gets less (0).
std::string colour(double w, double uniform) {
    w = std::min(1.0, std::max(0.0, w));
    const double up = w >= uniform ? (w - uniform) / std::max(1e-9, 1 - uniform) : 0;
    const double down = w < uniform ? (uniform - w) / std::max(1e-9, uniform) : 0;
    const auto mix = [&](int white, int orange, int blue) { return int(white - up * (white - orange) - down * (white - blue)); };
    char buf[16];
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", mix(255, 214, 44), mix(255, 96, 110), mix(255, 10, 200));
    return buf;
}

}  // namespace

std::string router_heatmap_svg(const std::string &title, const std::vector<std::string> &experts, const std::vector<HeatmapGroup> &groups) {
    if (groups.empty()) return "";
    const int64_t layers = groups[0].weights.size(0), E = groups[0].weights.size(2);
    int64_t columns = 0;
    for (const auto &g : groups) columns += g.weights.size(1);
    const double cell_w = std::max(2.0, std::min(14.0, 900.0 / double(std::max<int64_t>(1, columns))));
    const double cell_h = 14, gap = 8, left = 170, top = 46;
    const double band = double(E) * cell_h + gap;
    const double width = left + double(columns) * cell_w + double(groups.size()) * 6 + 20;
    const double height = top + double(layers) * band + 60;
    std::ostringstream o;
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"8\" y=\"18\" font-size=\"14\">" << escape(title) << "</text>\n"
      << "<text x=\"8\" y=\"34\" fill=\"#555\">router weight of each expert per validation sequence: white = an even share (1/" << E
      << "), orange = more (up to 1), blue = less (down to 0); hover a cell for its value</text>\n";
    double x0 = left;
    for (const auto &g : groups) {
        const at::Tensor w = g.weights.to(at::kCPU, at::kDouble).contiguous();
        const auto a = w.accessor<double, 3>();
        for (int64_t l = 0; l < layers; ++l)
            for (int64_t e = 0; e < E; ++e) {
                const double y = top + double(l) * band + double(e) * cell_h;
                for (int64_t s = 0; s < w.size(1); ++s) {
                    o << "<rect x=\"" << x0 + double(s) * cell_w << "\" y=\"" << y << "\" width=\"" << cell_w << "\" height=\"" << cell_h
                      << "\" fill=\"" << colour(a[l][s][e], 1.0 / double(E)) << "\"><title>" << escape(g.label) << " seq " << s
                      << ", layer " << l << ", " << escape(experts[e]) << ": " << a[l][s][e] << "</title></rect>";
                }
                o << "\n";
            }
        const double mid = x0 + double(w.size(1)) * cell_w / 2;
        o << "<text x=\"" << mid << "\" y=\"" << top + double(layers) * band + 14 << "\" text-anchor=\"middle\">" << escape(g.label)
          << "</text>\n";
        // Mean weight per expert over the group, for the reader.
        std::ostringstream means;
        at::Tensor m = w.mean(at::IntArrayRef{0, 1});
        for (int64_t e = 0; e < E; ++e) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "%s%.2f", e ? " / " : "", m[e].item<double>());
            means << buf;
        }
        o << "<text x=\"" << mid << "\" y=\"" << top + double(layers) * band + 28 << "\" text-anchor=\"middle\" fill=\"#555\">mean "
          << means.str() << "</text>\n";
        x0 += double(w.size(1)) * cell_w + 6;
    }
    for (int64_t l = 0; l < layers; ++l)
        for (int64_t e = 0; e < E; ++e)
            o << "<text x=\"" << left - 6 << "\" y=\"" << top + double(l) * band + double(e) * cell_h + cell_h - 3
              << "\" text-anchor=\"end\">layer " << l << " · " << escape(experts[e]) << "</text>\n";
    o << "</svg>\n";
    return o.str();
}

}  // namespace mango
