#include "train/evaluate.hpp"

#include "train/train.hpp"

#include <map>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include "util/progress.hpp"

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
    std::vector<at::Tensor> shares;  // layer order: "layer<N>.expert_share" sorted by N
    std::vector<std::pair<int, std::string>> keys;
    for (const auto &[k, v] : r.stats)
        if (k.size() > 13 && k.compare(k.size() - 13, 13, ".expert_share") == 0) keys.push_back({std::stoi(k.substr(5)), k});
    std::sort(keys.begin(), keys.end());
    for (const auto &[_, k] : keys) shares.push_back(at::tensor(r.stats[k], at::kDouble));
    if (!shares.empty()) r.expert_shares = at::stack(shares);
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

std::string expert_share_svg(const std::string &title, const std::vector<std::string> &experts, const std::vector<HeatmapGroup> &groups) {
    if (groups.empty()) return "";
    const int64_t L = groups[0].shares.size(0), E = groups[0].shares.size(1);
    const double cell_w = std::max(34.0, std::min(70.0, 700.0 / double(std::max<int64_t>(1, E)))), cell_h = 20, left = 70, top = 56,
                 gap = 30;
    const double panel_w = double(E) * cell_w;
    const double width = left + double(groups.size()) * (panel_w + gap) + 10, height = top + double(L) * cell_h + 60;
    std::ostringstream o;
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"8\" y=\"18\" font-size=\"14\">" << escape(title) << "</text>\n"
      << "<text x=\"8\" y=\"34\" fill=\"#555\">each expert's share of a layer's routing: white = an even share (1/" << E
      << "), orange = more, blue = less</text>\n";
    for (size_t g = 0; g < groups.size(); ++g) {
        const double x0 = left + double(g) * (panel_w + gap);
        const at::Tensor w = groups[g].shares.to(at::kCPU, at::kDouble).contiguous();
        const auto a = w.accessor<double, 2>();
        o << "<text x=\"" << x0 + panel_w / 2 << "\" y=\"" << top - 6 << "\" text-anchor=\"middle\" font-weight=\"bold\">"
          << escape(groups[g].label) << "</text>\n";
        for (int64_t l = 0; l < L; ++l)
            for (int64_t e = 0; e < E; ++e) {
                const double x = x0 + double(e) * cell_w, y = top + double(l) * cell_h, v = a[l][e];
                o << "<rect x=\"" << x << "\" y=\"" << y << "\" width=\"" << cell_w - 1 << "\" height=\"" << cell_h - 1 << "\" fill=\""
                  << colour(v, 1.0 / double(E)) << "\"><title>" << escape(groups[g].label) << ", layer " << l << ", "
                  << escape(experts[size_t(e)]) << ": " << v << "</title></rect><text x=\"" << x + cell_w / 2 << "\" y=\"" << y + 14
                  << "\" text-anchor=\"middle\" font-size=\"10\">" << format_fixed(v, 2) << "</text>\n";
            }
        for (int64_t e = 0; e < E; ++e)
            o << "<text x=\"" << x0 + (double(e) + 0.5) * cell_w << "\" y=\"" << top + double(L) * cell_h + 14
              << "\" text-anchor=\"middle\">" << escape(experts[size_t(e)]) << "</text>\n";
    }
    for (int64_t l = 0; l < L; ++l)
        o << "<text x=\"" << left - 6 << "\" y=\"" << top + double(l) * cell_h + 14 << "\" text-anchor=\"end\">layer " << l << "</text>\n";
    o << "</svg>\n";
    return o.str();
}

std::string training_curves_svg(const std::string &title, const std::string &log_path) {
    std::ifstream in(log_path);
    std::map<std::string, std::vector<std::pair<double, double>>> series;  // name -> (step, value)
    std::string line;
    while (std::getline(in, line)) {
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const std::exception &) {
            continue;
        }
        if (!j.contains("step")) continue;
        const double step = j["step"].get<double>();
        for (const char *k : {"lm_loss", "perplexity", "validation_perplexity"})
            if (j.contains(k) && j[k].is_number()) series[k].push_back({step, j[k].get<double>()});
        if (j.contains("aux_losses") && j["aux_losses"].contains("load_balance"))
            series["load_balance"].push_back({step, j["aux_losses"]["load_balance"].get<double>()});
    }
    const std::vector<std::string> order = {"lm_loss", "perplexity", "load_balance", "validation_perplexity"};
    std::vector<std::string> shown;
    for (const auto &k : order)
        if (!series[k].empty()) shown.push_back(k);
    const double pw = 320, ph = 180, pad = 46;
    std::ostringstream o;
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << double(std::max<size_t>(1, shown.size())) * (pw + pad) + pad
      << "\" height=\"" << ph + 90
      << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"8\" y=\"18\" "
         "font-size=\"14\">"
      << escape(title) << "</text>\n";
    for (size_t i = 0; i < shown.size(); ++i) {
        const auto &pts = series[shown[i]];
        double x_lo = pts.front().first, x_hi = pts.front().first, y_lo = pts.front().second, y_hi = pts.front().second;
        for (const auto &[x, y] : pts)
            x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x), y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
        if (x_hi == x_lo) x_hi = x_lo + 1;
        if (y_hi == y_lo) y_hi = y_lo + 1;
        const double x0 = pad + double(i) * (pw + pad), y0 = 40;
        o << "<rect x=\"" << x0 << "\" y=\"" << y0 << "\" width=\"" << pw << "\" height=\"" << ph << "\" fill=\"none\" stroke=\"#999\"/>\n";
        o << "<text x=\"" << x0 + pw / 2 << "\" y=\"" << y0 - 6 << "\" text-anchor=\"middle\" font-weight=\"bold\">" << shown[i]
          << "</text>\n";
        o << "<text x=\"" << x0 - 4 << "\" y=\"" << y0 + 10 << "\" text-anchor=\"end\">" << format_fixed(y_hi, 3) << "</text>\n";
        o << "<text x=\"" << x0 - 4 << "\" y=\"" << y0 + ph << "\" text-anchor=\"end\">" << format_fixed(y_lo, 3) << "</text>\n";
        o << "<text x=\"" << x0 + pw << "\" y=\"" << y0 + ph + 14 << "\" text-anchor=\"end\">step " << int64_t(x_hi)
          << "</text>\n<polyline fill=\"none\" stroke=\"#d6602c\" stroke-width=\"1.5\" points=\"";
        for (const auto &[x, y] : pts) o << x0 + (x - x_lo) / (x_hi - x_lo) * pw << "," << y0 + ph - (y - y_lo) / (y_hi - y_lo) * ph << " ";
        o << "\"/>\n";
    }
    o << "</svg>\n";
    return o.str();
}

}  // namespace mango
