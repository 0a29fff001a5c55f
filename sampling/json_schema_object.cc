// The object keywords of the JSON schema converter (json_schema_converter.h):
// properties, required, additionalProperties (keys other than the listed
// ones), and allOf.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sampling/grammar.h"
#include "sampling/json_schema_converter.h"
#include "sampling/json_schema_rules.h"

namespace moeflow::sampling::json_schema_internal {

const Json& AnySchema() {
  static const Json* any = new Json(Json::object());
  return *any;
}

bool IsAny(const Json& schema) {
  if (schema.is_boolean()) return schema.get<bool>();
  if (!schema.is_object()) return false;
  for (const char* key : {"$ref", "oneOf", "anyOf", "allOf", "type", "const", "enum", "properties",
                          "additionalProperties", "items", "prefixItems", "pattern", "minLength",
                          "maxLength", "format"}) {
    if (schema.contains(key)) return false;
  }
  return true;
}

absl::StatusOr<std::string> Converter::Object(const Json& schema, const std::string& name,
                                              const std::string& rule_name,
                                              const std::string& path) {
  std::set<std::string> required;
  if (auto r = schema.find("required"); r != schema.end() && r->is_array()) {
    for (const Json& n : *r) {
      if (n.is_string()) required.insert(n.get<std::string>());
    }
  }
  std::vector<std::pair<std::string, const Json*>> properties;
  if (auto p = schema.find("properties"); p != schema.end()) {
    if (!p->is_object()) return Error(path, "properties must be an object");
    for (const auto& [key, value] : p->items()) properties.emplace_back(key, &value);
  }
  const Json* additional = nullptr;
  if (auto a = schema.find("additionalProperties"); a != schema.end()) {
    if (a->is_boolean()) {
      if (a->get<bool>()) additional = &AnySchema();
    } else if (a->is_object()) {
      additional = IsAny(*a) ? &AnySchema() : &*a;
    } else {
      return Error(path, "additionalProperties must be a boolean or a schema");
    }
  } else if (!schema.contains("properties")) {
    additional = &AnySchema();  // {"type": "object"} alone: any object
  }
  if (properties.empty() && additional == &AnySchema()) {
    return AddRule(rule_name, AddBuiltin("object"));
  }
  absl::StatusOr<std::string> body = ObjectRule(properties, required, name, additional, path);
  if (!body.ok()) return body.status();
  return AddRule(rule_name, *body);
}

absl::StatusOr<std::string> Converter::ObjectRule(
    const std::vector<std::pair<std::string, const Json*>>& properties,
    const std::set<std::string>& required, const std::string& name, const Json* additional,
    const std::string& path) {
  const std::string prefix = name.empty() ? "" : name + "-";
  std::map<std::string, std::string> kv_rules;
  std::vector<std::string> required_keys, optional_keys, names;
  for (const auto& [key, schema] : properties) {
    absl::StatusOr<std::string> value =
        Visit(*schema, prefix + key, absl::StrCat(path, "/properties/", key));
    if (!value.ok()) return value.status();
    kv_rules[key] =
        AddRule(prefix + key + "-kv", Literal(Json(key).dump()) + " space \":\" space " + *value);
    (required.count(key) > 0 ? required_keys : optional_keys).push_back(key);
    names.push_back(key);
  }
  if (additional != nullptr) {
    const std::string sub = prefix + "additional";
    std::string value_rule;
    if (additional == &AnySchema()) {
      value_rule = AddBuiltin("value");
    } else {
      absl::StatusOr<std::string> v =
          Visit(*additional, sub + "-value", path + "/additionalProperties");
      if (!v.ok()) return v.status();
      value_rule = *v;
    }
    const std::string key_rule =
        names.empty() ? AddBuiltin("string") : AddRule(sub + "-k", NotStrings(names));
    kv_rules["*"] = AddRule(sub + "-kv", key_rule + " \":\" space " + value_rule);
    optional_keys.push_back("*");
  }
  if (required_keys.empty() && optional_keys.empty()) return std::string(R"("{" space "}")");
  std::string rule = "\"{\" space ";
  for (size_t i = 0; i < required_keys.size(); ++i) {
    if (i > 0) rule += " \",\" space ";
    rule += kv_rules[required_keys[i]];
  }
  if (!optional_keys.empty()) {
    // The optional ones in order, each one present or not: alternatives by
    // which comes first, each followed by a rule for the rest.
    std::function<std::string(size_t, bool)> rest = [&](size_t from, bool first_optional) {
      const std::string& key = optional_keys[from];
      const std::string& kv = kv_rules[key];
      const std::string comma = "( \",\" space " + kv + " )";
      std::string out = first_optional ? comma + (key == "*" ? "*" : "?")
                                       : kv + (key == "*" ? " " + comma + "*" : "");
      if (from + 1 < optional_keys.size()) {
        out += " " + AddRule(prefix + key + "-rest", rest(from + 1, true));
      }
      return out;
    };
    rule += " (";
    if (!required_keys.empty()) rule += " \",\" space ( ";
    for (size_t i = 0; i < optional_keys.size(); ++i) {
      if (i > 0) rule += " | ";
      rule += rest(i, false);
    }
    if (!required_keys.empty()) rule += " )";
    rule += " )?";
  }
  return rule + " space \"}\"";
}

std::string Converter::NotStrings(const std::vector<std::string>& strings) {
  // A trie of the keys' code points. At each node a key may stop (unless a
  // listed key ends there), follow a listed key's next character, or take
  // any other character (or escape) and then anything.
  struct Node {
    std::map<uint32_t, int> children;
    bool end = false;
  };
  std::vector<Node> trie(1);
  for (const std::string& s : strings) {
    std::vector<uint32_t> cps;
    if (!DecodeUtf8(s, &cps)) continue;
    // A key JSON writes with escapes is not excluded (its escaped form is
    // one of the "other" spellings): a duplicate key stays possible there.
    if (std::any_of(cps.begin(), cps.end(),
                    [](uint32_t c) { return c == '"' || c == '\\' || c < 0x20 || c == 0x7F; })) {
      continue;
    }
    int n = 0;
    for (uint32_t c : cps) {
      auto it = trie[n].children.find(c);
      if (it == trie[n].children.end()) {
        trie.emplace_back();
        it = trie[n].children.emplace(c, static_cast<int>(trie.size()) - 1).first;
      }
      n = it->second;
    }
    trie[n].end = true;
  }
  const std::string char_rule = AddBuiltin("char");
  auto class_char = [](uint32_t c) {
    std::string out;
    if (c == ']' || c == '-' || c == '^' || c == '[') out += '\\';
    AppendUtf8(c, &out);
    return out;
  };
  std::function<std::string(int)> visit = [&](int n) {
    std::vector<std::string> alternatives;
    std::string rejects;
    for (const auto& [c, child] : trie[n].children) {
      rejects += class_char(c);
      alternatives.push_back("[" + class_char(c) + "] " + visit(child));
    }
    alternatives.push_back(R"(([^"\\\x7F\x00-\x1F)" + rejects +
                           R"(] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})) )" + char_rule + "*");
    std::string out = "(" + absl::StrJoin(alternatives, " | ") + ")";
    if (!trie[n].end) out += "?";
    return out;
  };
  return "[\"] " + visit(0) + " [\"]";
}

absl::StatusOr<std::string> Converter::AllOf(const Json& schema, const std::string& name,
                                             const std::string& rule_name,
                                             const std::string& path) {
  const Json& members = schema["allOf"];
  if (!members.is_array() || members.empty()) {
    return Error(path + "/allOf", "must be a non-empty array of schemas");
  }
  std::vector<std::pair<std::string, const Json*>> properties;
  std::set<std::string> required;
  std::map<std::string, size_t> enum_counts;
  std::function<absl::Status(const Json&, bool, const std::string&)> add =
      [&](const Json& member, bool is_required, const std::string& at) -> absl::Status {
    if (!member.is_object()) return Error(at, "a schema must be an object");
    if (auto ref = member.find("$ref"); ref != member.end() && ref->is_string()) {
      absl::StatusOr<const Json*> target = Resolve(ref->get<std::string>(), at);
      if (!target.ok()) return target.status();
      return add(**target, is_required, ref->get<std::string>());
    }
    if (auto p = member.find("properties"); p != member.end() && p->is_object()) {
      for (const auto& [key, value] : p->items()) {
        properties.emplace_back(key, &value);
        if (is_required) required.insert(key);
      }
    }
    if (auto e = member.find("enum"); e != member.end() && e->is_array()) {
      for (const Json& v : *e) enum_counts[Literal(v.dump())]++;
    }
    return absl::OkStatus();
  };
  for (size_t i = 0; i < members.size(); ++i) {
    const Json& member = members[i];
    const std::string at = absl::StrCat(path, "/allOf/", i);
    if (member.is_object() && member.contains("anyOf") && member["anyOf"].is_array()) {
      for (const Json& alt : member["anyOf"]) {
        if (absl::Status s = add(alt, false, at); !s.ok()) return s;
      }
    } else if (absl::Status s = add(member, true, at); !s.ok()) {
      return s;
    }
  }
  std::vector<std::string> common;
  for (const auto& [value, count] : enum_counts) {
    if (count == members.size()) common.push_back(value);
  }
  if (!common.empty()) return AddRule(rule_name, "(" + absl::StrJoin(common, " | ") + ")");
  absl::StatusOr<std::string> body = ObjectRule(properties, required, name, nullptr, path);
  if (!body.ok()) return body.status();
  return AddRule(rule_name, *body);
}

}  // namespace moeflow::sampling::json_schema_internal
