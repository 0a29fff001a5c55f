#include "sampling/json_schema_grammar.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sampling/grammar.h"
#include "sampling/json_schema_pattern.h"

namespace moeflow::sampling {
namespace {

using Json = nlohmann::ordered_json;

// Whitespace between tokens: none, a space, or one or two newlines and an
// indent.
constexpr char kSpaceRule[] = R"(| " " | "\n"{1,2} [ \t]{0,20})";

struct Builtin {
  const char* body;
  std::vector<const char*> deps;
};

// The shared rules, named as llama.cpp names them.
const std::map<std::string, Builtin>& Builtins() {
  static const auto* rules = new std::map<std::string, Builtin>{
      {"boolean", {R"(("true" | "false"))", {}}},
      {"null", {R"("null")", {}}},
      {"decimal-part", {R"([0-9]{1,16})", {}}},
      {"integral-part", {R"([0] | [1-9] [0-9]{0,15})", {}}},
      {"integer", {R"(("-"? integral-part))", {"integral-part"}}},
      {"number",
       {R"(("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?)",
        {"integral-part", "decimal-part"}}},
      {"char", {R"([^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4}))", {}}},
      {"string", {R"("\"" char* "\"")", {"char"}}},
      {"value",
       {"object | array | string | number | boolean | null",
        {"object", "array", "string", "number", "boolean", "null"}}},
      {"object",
       {R"("{" space ( string ":" space value ("," space string ":" space value)* )? space "}")",
        {"string", "value"}}},
      {"array", {R"("[" space ( value ("," space value)* )? space "]")", {"value"}}},
      {"uuid",
       {R"("\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"")",
        {}}},
      {"date",
       {R"([0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] ))",
        {}}},
      {"time",
       {R"(([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ))",
        {}}},
      {"date-time", {R"(date "T" time)", {"date", "time"}}},
      {"date-string", {R"("\"" date "\"")", {"date"}}},
      {"time-string", {R"("\"" time "\"")", {"time"}}},
      {"date-time-string", {R"("\"" date-time "\"")", {"date-time"}}},
  };
  return *rules;
}

bool IsReserved(const std::string& name) { return name == "root" || Builtins().count(name) > 0; }

// [^a-zA-Z0-9-]+ → "-".
std::string RuleNameOf(const std::string& name) {
  std::string out;
  bool in_bad = false;
  for (char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    if (ok) {
      out += c;
      in_bad = false;
    } else if (!in_bad) {
      out += '-';
      in_bad = true;
    }
  }
  return out;
}

// A GBNF literal of `text`.
std::string Literal(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '\r':
        out += "\\r";
        break;
      case '\n':
        out += "\\n";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        out += c;
    }
  }
  return out + "\"";
}

// `item` min..max times (max < 0: no limit), `separator` between items.
std::string Repetition(const std::string& item, int64_t min, int64_t max,
                       const std::string& separator = "") {
  const bool has_max = max >= 0;
  if (max == 0) return "";
  if (min == 0 && max == 1) return item + "?";
  if (separator.empty()) {
    if (min == 1 && !has_max) return item + "+";
    if (min == 0 && !has_max) return item + "*";
    return absl::StrCat(item, "{", min, ",", has_max ? absl::StrCat(max) : "", "}");
  }
  std::string out = item + " " +
                    Repetition("(" + separator + " " + item + ")", min == 0 ? 0 : min - 1,
                               has_max ? max - 1 : -1);
  return min == 0 ? "(" + out + ")?" : out;
}

// --- integer bounds ------------------------------------------------------------

// Longest integers the grammar writes: 16 digits (integral-part).
constexpr int64_t kMaxDigitsValue = 9999999999999999;

std::string DigitClass(char lo, char hi) {
  return lo == hi ? absl::StrCat("[", std::string(1, lo), "]")
                  : absl::StrCat("[", std::string(1, lo), "-", std::string(1, hi), "]");
}

// Decimal strings of equal length, lo <= hi: the numbers between as GBNF.
std::string SameLengthRange(const std::string& lo, const std::string& hi) {
  const size_t n = lo.size();
  if (n == 1) return DigitClass(lo[0], hi[0]);
  const std::string lo_rest = lo.substr(1), hi_rest = hi.substr(1);
  if (lo[0] == hi[0]) {
    return absl::StrCat("[", std::string(1, lo[0]), "] (", SameLengthRange(lo_rest, hi_rest), ")");
  }
  const std::string zeros(n - 1, '0'), nines(n - 1, '9');
  std::vector<std::string> parts;
  char first = lo[0], last = hi[0];
  if (lo_rest != zeros) {
    parts.push_back(
        absl::StrCat("[", std::string(1, lo[0]), "] (", SameLengthRange(lo_rest, nines), ")"));
    ++first;
  }
  std::string top;
  if (hi_rest != nines) {
    top = absl::StrCat("[", std::string(1, hi[0]), "] (", SameLengthRange(zeros, hi_rest), ")");
    --last;
  }
  if (first <= last) {
    parts.push_back(DigitClass(first, last) +
                    (n - 1 == 1 ? " [0-9]" : absl::StrCat(" [0-9]{", n - 1, "}")));
  }
  if (!top.empty()) parts.push_back(top);
  return absl::StrJoin(parts, " | ");
}

// 0 <= lo <= hi.
std::string NonNegativeRange(int64_t lo, int64_t hi) {
  std::vector<std::string> parts;
  const size_t lo_digits = std::to_string(lo).size(), hi_digits = std::to_string(hi).size();
  for (size_t d = lo_digits; d <= hi_digits; ++d) {
    const std::string from = d == lo_digits ? std::to_string(lo) : "1" + std::string(d - 1, '0');
    const std::string to = d == hi_digits ? std::to_string(hi) : std::string(d, '9');
    parts.push_back(SameLengthRange(from, to));
  }
  return absl::StrJoin(parts, " | ");
}

std::string IntegerRange(int64_t lo, int64_t hi) {
  if (hi < 0) return absl::StrCat("\"-\" (", NonNegativeRange(-hi, -lo), ")");
  if (lo < 0) {
    return absl::StrCat("\"-\" (", NonNegativeRange(1, -lo), ") | ", NonNegativeRange(0, hi));
  }
  return NonNegativeRange(lo, hi);
}

// --- the converter -------------------------------------------------------------

class Converter {
 public:
  Converter(const Json& root, std::vector<std::string>* warnings)
      : root_(root), warnings_(warnings) {
    rules_["space"] = kSpaceRule;
  }

  absl::StatusOr<std::string> Visit(const Json& schema, const std::string& name,
                                    const std::string& path);

  std::string Format() const {
    std::string out;
    for (const auto& [name, body] : rules_) absl::StrAppend(&out, name, " ::= ", body, "\n");
    return out;
  }

 private:
  absl::Status Error(const std::string& path, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  }

  std::string AddRule(const std::string& name, const std::string& body) {
    const std::string base = RuleNameOf(name);
    auto it = rules_.find(base);
    if (it == rules_.end() || it->second == body) {
      rules_[base] = body;
      return base;
    }
    for (int i = 0;; ++i) {
      const std::string key = absl::StrCat(base, i);
      auto found = rules_.find(key);
      if (found == rules_.end() || found->second == body) {
        rules_[key] = body;
        return key;
      }
    }
  }

  std::string AddBuiltin(const std::string& builtin, const std::string& as = "") {
    const Builtin& b = Builtins().at(builtin);
    const std::string name = AddRule(as.empty() ? builtin : as, b.body);
    for (const char* dep : b.deps) {
      if (rules_.count(dep) == 0) AddBuiltin(dep);
    }
    return name;
  }

  // A primitive as llama.cpp adds it: under its own name, or as the root.
  std::string Primitive(const std::string& rule_name, const std::string& type) {
    return AddBuiltin(type, rule_name == "root" ? "root" : "");
  }

  absl::StatusOr<const Json*> Resolve(const std::string& ref, const std::string& path) const;
  absl::StatusOr<std::string> Ref(const std::string& ref, const std::string& path);
  absl::StatusOr<std::string> Object(const Json& schema, const std::string& name,
                                     const std::string& rule_name, const std::string& path);
  absl::StatusOr<std::string> ObjectRule(
      const std::vector<std::pair<std::string, const Json*>>& properties,
      const std::set<std::string>& required, const std::string& name, const Json* additional,
      const std::string& path);
  absl::StatusOr<std::string> AllOf(const Json& schema, const std::string& name,
                                    const std::string& rule_name, const std::string& path);
  absl::StatusOr<std::string> Array(const Json& schema, const std::string& name,
                                    const std::string& rule_name, const std::string& path);
  absl::StatusOr<std::string> String(const Json& schema, const std::string& rule_name,
                                     const std::string& path);
  absl::StatusOr<std::string> Integer(const Json& schema, const std::string& rule_name,
                                      const std::string& path);
  absl::StatusOr<int64_t> Count(const Json& schema, const char* key, int64_t fallback,
                                const std::string& path) const;
  // Any JSON string but the given ones (object keys other than properties).
  std::string NotStrings(const std::vector<std::string>& strings);

  const Json& root_;
  std::vector<std::string>* warnings_;
  std::map<std::string, std::string> rules_;
  std::set<std::string> resolving_;
};

// The marker for "any value" in Object's `additional`.
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

absl::StatusOr<const Json*> Converter::Resolve(const std::string& ref,
                                               const std::string& path) const {
  if (ref == "#") return &root_;
  if (ref.rfind("#/", 0) != 0) {
    return Error(path, absl::StrCat("$ref ", ref,
                                    " is not supported: only references into the same document "
                                    "(\"#\" or \"#/...\")"));
  }
  const Json* target = &root_;
  size_t start = 2;
  while (start <= ref.size()) {
    size_t end = ref.find('/', start);
    if (end == std::string::npos) end = ref.size();
    std::string token = ref.substr(start, end - start);
    // JSON pointer escapes: ~1 is '/', ~0 is '~'.
    for (size_t p; (p = token.find("~1")) != std::string::npos;) token.replace(p, 2, "/");
    for (size_t p; (p = token.find("~0")) != std::string::npos;) token.replace(p, 2, "~");
    if (target->is_object() && target->contains(token)) {
      target = &(*target)[token];
    } else if (target->is_array() && !token.empty() &&
               token.find_first_not_of("0123456789") == std::string::npos &&
               std::stoull(token) < target->size()) {
      target = &(*target)[std::stoull(token)];
    } else {
      return Error(path, absl::StrCat("$ref ", ref, " does not resolve: no '", token, "'"));
    }
    start = end + 1;
  }
  return target;
}

absl::StatusOr<std::string> Converter::Ref(const std::string& ref, const std::string& path) {
  const std::string ref_name = RuleNameOf("ref" + ref.substr(1));
  if (rules_.count(ref_name) > 0 || resolving_.count(ref) > 0) return ref_name;
  absl::StatusOr<const Json*> target = Resolve(ref, path);
  if (!target.ok()) return target.status();
  resolving_.insert(ref);
  absl::StatusOr<std::string> rule = Visit(**target, ref_name, ref);
  resolving_.erase(ref);
  return rule;
}

absl::StatusOr<int64_t> Converter::Count(const Json& schema, const char* key, int64_t fallback,
                                         const std::string& path) const {
  auto it = schema.find(key);
  if (it == schema.end()) return fallback;
  if (!it->is_number_integer() || it->get<int64_t>() < 0) {
    return Error(path, absl::StrCat(key, " must be a non-negative integer"));
  }
  return it->get<int64_t>();
}

absl::StatusOr<std::string> Converter::Visit(const Json& schema, const std::string& name,
                                             const std::string& path) {
  const std::string rule_name = IsReserved(name) ? name + "-" : name.empty() ? "root" : name;
  if (schema.is_boolean()) {
    if (!schema.get<bool>()) return Error(path, "the schema false matches nothing");
    return AddRule(rule_name, AddBuiltin("value"));
  }
  if (!schema.is_object()) return Error(path, "a schema must be an object");
  if (auto ref = schema.find("$ref"); ref != schema.end()) {
    if (!ref->is_string()) return Error(path, "$ref must be a string");
    absl::StatusOr<std::string> target = Ref(ref->get<std::string>(), path);
    if (!target.ok()) return target.status();
    return AddRule(rule_name, *target);
  }
  for (const char* key : {"oneOf", "anyOf"}) {
    auto alts = schema.find(key);
    if (alts == schema.end()) continue;
    if (!alts->is_array() || alts->empty()) {
      return Error(absl::StrCat(path, "/", key), "must be a non-empty array of schemas");
    }
    std::vector<std::string> rules;
    for (size_t i = 0; i < alts->size(); ++i) {
      absl::StatusOr<std::string> rule =
          Visit((*alts)[i], absl::StrCat(name, name.empty() ? "alternative-" : "-", i),
                absl::StrCat(path, "/", key, "/", i));
      if (!rule.ok()) return rule.status();
      rules.push_back(*rule);
    }
    return AddRule(rule_name, absl::StrJoin(rules, " | "));
  }
  const Json* type = nullptr;
  if (auto it = schema.find("type"); it != schema.end()) type = &*it;
  if (type != nullptr && type->is_array()) {
    if (type->empty()) return Error(path, "type must not be an empty list");
    std::vector<std::string> rules;
    for (size_t i = 0; i < type->size(); ++i) {
      Json alt = schema;
      alt["type"] = (*type)[i];
      absl::StatusOr<std::string> rule =
          Visit(alt, absl::StrCat(name, name.empty() ? "alternative-" : "-", i),
                absl::StrCat(path, "/type/", i));
      if (!rule.ok()) return rule.status();
      rules.push_back(*rule);
    }
    return AddRule(rule_name, absl::StrJoin(rules, " | "));
  }
  if (auto c = schema.find("const"); c != schema.end())
    return AddRule(rule_name, Literal(c->dump()));
  if (auto e = schema.find("enum"); e != schema.end()) {
    if (!e->is_array() || e->empty()) return Error(path, "enum must be a non-empty array");
    std::vector<std::string> values;
    for (const Json& v : *e) values.push_back(Literal(v.dump()));
    return AddRule(rule_name, "(" + absl::StrJoin(values, " | ") + ")");
  }
  if (type != nullptr && !type->is_string()) {
    return Error(path, "type must be a string or a list of strings");
  }
  const std::string type_name = type != nullptr ? type->get<std::string>() : "";
  const bool has_properties =
      schema.contains("properties") ||
      (schema.contains("additionalProperties") && schema["additionalProperties"] != Json(true));
  if (type_name.empty()) {
    if (has_properties) return Object(schema, name, rule_name, path);
    if (schema.contains("allOf")) return AllOf(schema, name, rule_name, path);
    if (schema.contains("items") || schema.contains("prefixItems")) {
      return Array(schema, name, rule_name, path);
    }
    if (schema.contains("pattern") || schema.contains("minLength") ||
        schema.contains("maxLength") || schema.contains("format")) {
      return String(schema, rule_name, path);
    }
    return AddRule(rule_name, AddBuiltin("value"));
  }
  if (type_name == "object") {
    if (!has_properties && schema.contains("allOf")) return AllOf(schema, name, rule_name, path);
    return Object(schema, name, rule_name, path);
  }
  if (type_name == "string") {
    if (schema.contains("allOf")) return AllOf(schema, name, rule_name, path);
    return String(schema, rule_name, path);
  }
  if (type_name == "array") return Array(schema, name, rule_name, path);
  if (type_name == "integer") return Integer(schema, rule_name, path);
  if (type_name == "number") return Primitive(rule_name, "number");
  if (type_name == "boolean") return Primitive(rule_name, "boolean");
  if (type_name == "null") return Primitive(rule_name, "null");
  return Error(path, absl::StrCat("unknown type \"", type_name, "\""));
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

absl::StatusOr<std::string> Converter::Array(const Json& schema, const std::string& name,
                                             const std::string& rule_name,
                                             const std::string& path) {
  const std::string prefix = name.empty() ? "" : name + "-";
  const char* key = schema.contains("items") ? "items" : "prefixItems";
  const Json* items = schema.contains(key) ? &schema[key] : nullptr;
  if (items != nullptr && items->is_array()) {
    std::string rule = "\"[\" space ";
    for (size_t i = 0; i < items->size(); ++i) {
      absl::StatusOr<std::string> item = Visit((*items)[i], absl::StrCat(prefix, "tuple-", i),
                                               absl::StrCat(path, "/", key, "/", i));
      if (!item.ok()) return item.status();
      if (i > 0) rule += " \",\" space ";
      rule += *item;
    }
    return AddRule(rule_name, rule + " space \"]\"");
  }
  absl::StatusOr<int64_t> min = Count(schema, "minItems", 0, path);
  if (!min.ok()) return min.status();
  absl::StatusOr<int64_t> max = Count(schema, "maxItems", -1, path);
  if (!max.ok()) return max.status();
  if (*max >= 0 && *max < *min) return Error(path, "maxItems is below minItems");
  if ((items == nullptr || IsAny(*items)) && *min == 0 && *max < 0) {
    return Primitive(rule_name, "array");
  }
  std::string item_rule;
  if (items == nullptr) {
    item_rule = AddBuiltin("value");
  } else {
    absl::StatusOr<std::string> item = Visit(*items, prefix + "item", absl::StrCat(path, "/", key));
    if (!item.ok()) return item.status();
    item_rule = *item;
  }
  return AddRule(rule_name, "\"[\" space " + Repetition(item_rule, *min, *max, "\",\" space") +
                                " space \"]\"");
}

absl::StatusOr<std::string> Converter::String(const Json& schema, const std::string& rule_name,
                                              const std::string& path) {
  if (auto p = schema.find("pattern"); p != schema.end()) {
    if (!p->is_string()) return Error(path, "pattern must be a string");
    absl::StatusOr<std::string> body = JsonStringPatternGbnf(p->get<std::string>());
    if (absl::IsUnimplemented(body.status())) {
      if (warnings_ != nullptr) {
        warnings_->push_back(absl::StrCat(path, ": pattern ", p->get<std::string>(),
                                          " is not supported (", body.status().message(),
                                          "); any string is accepted"));
      }
      return AddRule(rule_name, AddBuiltin("string"));
    }
    if (!body.ok()) return Error(path, std::string(body.status().message()));
    return AddRule(rule_name, *body);
  }
  if (auto f = schema.find("format"); f != schema.end()) {
    if (!f->is_string()) return Error(path, "format must be a string");
    const std::string format = f->get<std::string>();
    if (format == "uuid" || (format.size() == 5 && format.rfind("uuid", 0) == 0 &&
                             format[4] >= '1' && format[4] <= '5')) {
      return Primitive(rule_name, "uuid");
    }
    if (format == "date" || format == "time" || format == "date-time") {
      return AddRule(rule_name, AddBuiltin(format + "-string"));
    }
  }
  absl::StatusOr<int64_t> min = Count(schema, "minLength", 0, path);
  if (!min.ok()) return min.status();
  absl::StatusOr<int64_t> max = Count(schema, "maxLength", -1, path);
  if (!max.ok()) return max.status();
  if (*max >= 0 && *max < *min) return Error(path, "maxLength is below minLength");
  if (*min > 0 || *max >= 0) {
    return AddRule(rule_name,
                   "\"\\\"\" " + Repetition(AddBuiltin("char"), *min, *max) + " \"\\\"\"");
  }
  return Primitive(rule_name, "string");
}

absl::StatusOr<std::string> Converter::Integer(const Json& schema, const std::string& rule_name,
                                               const std::string& path) {
  int64_t lo = -kMaxDigitsValue, hi = kMaxDigitsValue;
  bool bounded = false;
  // A fractional bound is rounded inwards; an exclusive one moves by one.
  // Past 16 digits the grammar cannot go anyway: bounds are clamped there.
  auto bound = [&](const char* key, bool lower, bool exclusive, int64_t* out) -> absl::Status {
    const Json& b = schema[key];
    if (!b.is_number()) return Error(path, absl::StrCat(key, " must be a number"));
    double v;
    if (b.is_number_integer()) {
      v = b.is_number_unsigned() ? static_cast<double>(b.get<uint64_t>())
                                 : static_cast<double>(b.get<int64_t>());
      if (exclusive) v += lower ? 1 : -1;
    } else {
      const double d = b.get<double>();
      if (!std::isfinite(d)) return Error(path, absl::StrCat(key, " must be finite"));
      v = lower ? (exclusive ? std::floor(d) + 1 : std::ceil(d))
                : (exclusive ? std::ceil(d) - 1 : std::floor(d));
    }
    const double limit = static_cast<double>(kMaxDigitsValue);
    *out = v <= -limit  ? -kMaxDigitsValue
           : v >= limit ? kMaxDigitsValue
                        : (b.is_number_integer() && !b.is_number_unsigned()
                               ? b.get<int64_t>() + (exclusive ? (lower ? 1 : -1) : 0)
                               : static_cast<int64_t>(v));
    bounded = true;
    return absl::OkStatus();
  };
  for (const auto& [inclusive, exclusive, lower, out] :
       {std::make_tuple("minimum", "exclusiveMinimum", true, &lo),
        std::make_tuple("maximum", "exclusiveMaximum", false, &hi)}) {
    if (schema.contains(inclusive)) {
      if (absl::Status s = bound(inclusive, lower, false, out); !s.ok()) return s;
    } else if (schema.contains(exclusive)) {
      if (absl::Status s = bound(exclusive, lower, true, out); !s.ok()) return s;
    }
  }
  if (!bounded) return Primitive(rule_name, "integer");
  if (lo > hi) return Error(path, "no integer is between the minimum and the maximum");
  return AddRule(rule_name, "(" + IntegerRange(lo, hi) + ")");
}

}  // namespace

absl::StatusOr<std::string> JsonSchemaToGbnf(const nlohmann::ordered_json& schema,
                                             std::vector<std::string>* warnings) {
  Converter converter(schema, warnings);
  absl::StatusOr<std::string> root = converter.Visit(schema, "", "#");
  if (!root.ok()) return root.status();
  return converter.Format();
}

}  // namespace moeflow::sampling
