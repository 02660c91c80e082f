#include "toml_reader.hpp"

#include <cmath>
#include <sstream>

namespace mango::pipeline {

std::string where(const Source &src, const toml::node *node, const std::string &key) {
    const auto line = node ? node->source().begin.line : 0;
    return src.file + (line ? ":" + std::to_string(line) : " (--set)") + ": " + key;
}

Table::Table(const Source &src, const toml::table &t, std::string path) : src_(src), t_(t), path_(std::move(path)) {}

std::string Table::at(const std::string &key) const {
    const toml::node *n = t_.get(key);
    return where(src_, n ? n : &t_, qualified(key));
}

std::string Table::here() const { return where(src_, &t_, path_.empty() ? "(top level)" : path_); }

const toml::node *Table::get(const std::string &key) {
    read_.insert(key);
    return t_.get(key);
}

namespace {
std::string type_name(const toml::node &n) {
    switch (n.type()) {
        case toml::node_type::string:
            return "a string";
        case toml::node_type::integer:
            return "an integer";
        case toml::node_type::floating_point:
            return "a number";
        case toml::node_type::boolean:
            return "a boolean";
        case toml::node_type::array:
            return "an array";
        case toml::node_type::table:
            return "a table";
        default:
            return "a date/time";
    }
}
}  // namespace

std::optional<std::string> Table::string(const std::string &key) {
    const toml::node *n = get(key);
    if (!n) return std::nullopt;
    if (!n->is_string()) throw PipelineError(at(key) + ": expected a string, found " + type_name(*n));
    return n->as_string()->get();
}

std::string Table::string(const std::string &key, const std::string &fallback) { return string(key).value_or(fallback); }

std::string Table::required_string(const std::string &key) {
    auto s = string(key);
    if (!s) throw PipelineError(here() + ": missing key '" + key + "'");
    return *s;
}

int64_t Table::integer(const std::string &key, int64_t fallback, int64_t minimum) {
    const toml::node *n = get(key);
    if (!n) return fallback;
    if (!n->is_integer()) throw PipelineError(at(key) + ": expected an integer, found " + type_name(*n));
    const int64_t v = n->as_integer()->get();
    if (v < minimum) throw PipelineError(at(key) + ": expected at least " + std::to_string(minimum) + ", found " + std::to_string(v));
    return v;
}

double Table::number(const std::string &key, double fallback, double minimum, double maximum) {
    const toml::node *n = get(key);
    if (!n) return fallback;
    double v;
    if (n->is_floating_point())
        v = n->as_floating_point()->get();
    else if (n->is_integer())
        v = double(n->as_integer()->get());
    else
        throw PipelineError(at(key) + ": expected a number, found " + type_name(*n));
    if (!std::isfinite(v)) throw PipelineError(at(key) + ": expected a finite number, found " + (std::isnan(v) ? "nan" : "inf"));
    if (v < minimum || v > maximum) {
        std::ostringstream o;
        o << at(key) << ": expected a number in [" << minimum << ", " << maximum << "], found " << v;
        throw PipelineError(o.str());
    }
    return v;
}

bool Table::boolean(const std::string &key, bool fallback) {
    const toml::node *n = get(key);
    if (!n) return fallback;
    if (!n->is_boolean()) throw PipelineError(at(key) + ": expected true or false, found " + type_name(*n));
    return n->as_boolean()->get();
}

std::vector<std::string> Table::strings(const std::string &key) {
    const toml::node *n = get(key);
    if (!n) return {};
    if (n->is_string()) return {n->as_string()->get()};
    std::vector<std::string> out;
    if (n->is_array())
        for (const toml::node &e : *n->as_array()) {
            if (!e.is_string()) throw PipelineError(at(key) + ": expected strings in the array, found " + type_name(e));
            out.push_back(e.as_string()->get());
        }
    else
        throw PipelineError(at(key) + ": expected a string or an array of strings, found " + type_name(*n));
    return out;
}

std::string resolve_path(const Source &src, const std::string &p) {
    std::string s = p;
    for (size_t i; (i = s.find("{output}")) != std::string::npos;) s.replace(i, 8, src.output);
    std::filesystem::path path(s);
    return (path.is_absolute() ? path : src.dir / path).lexically_normal().string();
}

std::optional<std::string> Table::path(const std::string &key) {
    auto s = string(key);
    if (!s) return std::nullopt;
    return resolve_path(src_, *s);
}

std::optional<Table> Table::table(const std::string &key) {
    const toml::node *n = get(key);
    if (!n) return std::nullopt;
    if (!n->is_table()) throw PipelineError(at(key) + ": expected a table, found " + type_name(*n));
    return Table(src_, *n->as_table(), qualified(key));
}

std::vector<std::string> Table::keys() const {
    std::vector<std::string> out;
    for (const auto &[k, _] : t_) out.emplace_back(k.str());
    return out;
}

void Table::finish() const {
    for (const auto &[k, v] : t_) {
        const std::string key(k.str());
        if (read_.count(key)) continue;
        std::string allowed;
        for (const auto &r : read_) allowed += (allowed.empty() ? "" : ", ") + r;
        throw PipelineError(where(src_, &v, qualified(key)) + ": unknown key '" + key + "'" +
                            (allowed.empty() ? "" : " (expected one of: " + allowed + ")"));
    }
}

nlohmann::json to_json(const toml::node &n) {
    if (n.is_string()) return n.as_string()->get();
    if (n.is_integer()) return n.as_integer()->get();
    if (n.is_floating_point()) return n.as_floating_point()->get();
    if (n.is_boolean()) return n.as_boolean()->get();
    if (n.is_array()) {
        nlohmann::json a = nlohmann::json::array();
        for (const auto &e : *n.as_array()) a.push_back(to_json(e));
        return a;
    }
    if (n.is_table()) {
        nlohmann::json o = nlohmann::json::object();
        for (const auto &[k, v] : *n.as_table()) o[std::string(k.str())] = to_json(v);
        return o;
    }
    return nullptr;  // dates and times: no plugin option takes one
}

namespace {

std::vector<std::string> split(const std::string &s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    for (char c : s) {
        if (c == sep)
            out.push_back(cur), cur.clear();
        else
            cur += c;
    }
    out.push_back(cur);
    return out;
}

// wild: reached through "*", so only keys that exist are changed. Returns how many values were set.
size_t assign(toml::node &at, const std::vector<std::string> &keys, size_t i, const toml::node &value, const std::string &full, bool wild) {
    const std::string &k = keys[i];
    const bool last = i + 1 == keys.size();
    if (auto *t = at.as_table()) {
        if (k == "*") {
            size_t n = 0;
            for (auto &[_, child] : *t)
                if (!last) n += assign(child, keys, i + 1, value, full, true);
            return n;
        }
        if (wild && !t->contains(k)) return 0;
        if (last) {
            t->insert_or_assign(k, value);
            return 1;
        }
        if (!t->contains(k)) t->insert(k, toml::table{});
        return assign(*t->get(k), keys, i + 1, value, full, wild);
    }
    if (auto *a = at.as_array()) {
        std::vector<size_t> idx;
        if (k == "*") {
            for (size_t j = 0; j < a->size(); ++j) idx.push_back(j);
        } else {
            size_t j = 0;
            try {
                j = std::stoul(k);
            } catch (...) {
                throw PipelineError("--set " + full + ": '" + k + "' is not an index into an array");
            }
            if (j >= a->size())
                throw PipelineError("--set " + full + ": index " + k + " is beyond the array (" + std::to_string(a->size()) + " elements)");
            idx.push_back(j);
        }
        size_t n = 0;
        for (size_t j : idx) {
            if (last)
                a->replace(a->cbegin() + static_cast<std::ptrdiff_t>(j), value), ++n;
            else
                n += assign(*a->get(j), keys, i + 1, value, full, wild || k == "*");
        }
        return n;
    }
    throw PipelineError("--set " + full + ": '" + keys[i - 1] + "' is a value, not a table or array");
}

}  // namespace

void apply_set(toml::table &root, const std::string &assignment) {
    const size_t eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) throw PipelineError("--set '" + clip(assignment) + "': expected KEY.PATH=VALUE");
    std::string key = assignment.substr(0, eq);
    const std::string text = assignment.substr(eq + 1);
    const bool optional = key.back() == '?';  // "a.*.b?=v": only where b exists, and no error where it nowhere does
    if (optional) key.pop_back();
    toml::table parsed;
    try {
        parsed = toml::parse("v = " + text);
    } catch (const toml::parse_error &) {
        parsed = toml::table{{"v", text}};  // a bare word: a string
    }
    const std::vector<std::string> keys = split(key, '.');
    if (keys.size() > 32)
        throw PipelineError("--set " + clip(key) + ": a key path of " + std::to_string(keys.size()) + " parts (at most 32)");
    for (const std::string &k : keys)
        if (k.empty()) throw PipelineError("--set " + clip(key) + ": an empty part in the key path (two dots, or a dot at an end)");
    if (assign(root, keys, 0, *parsed.get("v"), key, false) == 0 && !optional)
        throw PipelineError("--set " + clip(key) + ": no element has the key '" + clip(split(key, '.').back()) +
                            "' (a '*' only changes keys that exist; end the key with '?' to allow that)");
}

}  // namespace mango::pipeline
