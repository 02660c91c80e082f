#include "fusion/fusion_check.hpp"

#include <algorithm>
#include <set>

namespace mango {

int64_t check_fusion(const std::vector<FusionMember> &members, const FusionSpec &spec, const FusionPlaces &where) {
    if (members.empty()) throw HostError(where.fusion + ": a fusion needs at least one model");
    if (spec.base >= members.size())
        throw HostError(where.fusion + ": base model #" + std::to_string(spec.base) + " does not exist (" + std::to_string(members.size()) +
                        " models)");
    if (spec.layers.empty()) throw HostError(where.fusion + ": a fusion needs at least one fusion layer");
    for (const auto &m : members)
        if (!m.is_causal) throw HostError(where.fusion + ": " + m.name + " is an encoder; fusion takes causal LMs");
    int64_t target = spec.target_hidden;
    if (target <= 0)
        for (const auto &m : members) target = std::max(target, m.hidden_size);
    const bool adapter = !spec.adapter.name.empty();
    if (spec.always_adapt && !adapter) throw HostError(where.fusion + ": always_adapt needs an adapter");
    auto check_size = [&](size_t m, const std::string &place) {
        if (members[m].hidden_size != target && !adapter)
            throw HostError(place + ": " + members[m].name + " has hidden size " + std::to_string(members[m].hidden_size) +
                            " and the fused model " + std::to_string(target) +
                            "; configure an adapter (e.g. name = \"linear\") to join them");
    };
    check_size(spec.base, where.fusion + " (base model)");
    std::set<std::pair<size_t, int32_t>> used;
    for (size_t li = 0; li < spec.layers.size(); ++li) {
        const FusionLayer &l = spec.layers[li];
        const std::string place = where.layer(li);
        if (l.experts.empty()) throw HostError(place + ": a fusion layer needs at least one expert");
        if (l.router.name.empty()) throw HostError(place + ": no router for this fusion layer");
        for (const FusionExpert &e : l.experts) {
            if (e.model >= members.size()) throw HostError(place + ": model #" + std::to_string(e.model) + " does not exist");
            const FusionMember &m = members[e.model];
            if (e.layer < 0 || e.layer >= m.n_layers)
                throw HostError(place + ": layer " + std::to_string(e.layer) + " of " + m.name + " is out of range (it has " +
                                std::to_string(m.n_layers) + " layers: 0.." + std::to_string(m.n_layers - 1) + ")");
            if (!used.insert({e.model, e.layer}).second)
                throw HostError(place + ": layer " + std::to_string(e.layer) + " of " + m.name +
                                " is used twice (each block keeps one KV cache)");
            check_size(e.model, place);
        }
    }
    return target;
}

std::vector<size_t> adapted_members(const std::vector<FusionMember> &members, const FusionSpec &spec, int64_t target) {
    std::set<size_t> in_use{spec.base};
    for (const auto &l : spec.layers)
        for (const auto &e : l.experts) in_use.insert(e.model);
    std::vector<size_t> out;
    for (size_t m : in_use)
        if (m < members.size() && (spec.always_adapt || members[m].hidden_size != target)) out.push_back(m);
    return out;
}

}  // namespace mango
