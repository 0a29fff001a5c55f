// The JSON schema → GBNF converter behind JsonSchemaToGbnf
// (json_schema_grammar.h states the behaviour); internal to
// //sampling:json_schema_grammar. One Converter walks one schema and collects
// its rules: json_schema_grammar.cc holds the walk, references, arrays,
// strings and integers; json_schema_object.cc objects and allOf.
//
// Thread-safety: one Converter per call, not shared. Failure: InvalidArgument
// naming the JSON pointer of the bad part (Error()).
#ifndef MOEFLOW_SAMPLING_JSON_SCHEMA_CONVERTER_H_
#define MOEFLOW_SAMPLING_JSON_SCHEMA_CONVERTER_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "sampling/json_schema_rules.h"

namespace moeflow::sampling::json_schema_internal {

using Json = nlohmann::ordered_json;

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
const Json& AnySchema();
// Whether `schema` accepts any value (true, or an object without keywords).
bool IsAny(const Json& schema);

}  // namespace moeflow::sampling::json_schema_internal

#endif  // MOEFLOW_SAMPLING_JSON_SCHEMA_CONVERTER_H_
