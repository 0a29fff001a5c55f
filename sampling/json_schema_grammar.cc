#include "sampling/json_schema_grammar.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "sampling/json_schema_converter.h"
#include "sampling/json_schema_pattern.h"
#include "sampling/json_schema_rules.h"

namespace moeflow::sampling {
namespace json_schema_internal {

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

}  // namespace json_schema_internal

absl::StatusOr<std::string> JsonSchemaToGbnf(const nlohmann::ordered_json& schema,
                                             std::vector<std::string>* warnings) {
  json_schema_internal::Converter converter(schema, warnings);
  absl::StatusOr<std::string> root = converter.Visit(schema, "", "#");
  if (!root.ok()) return root.status();
  return converter.Format();
}

}  // namespace moeflow::sampling
