#include "sampling/grammar.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/check.h"

namespace moeflow::sampling {

void AppendUtf8(uint32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

bool DecodeUtf8(absl::string_view text, std::vector<uint32_t>* out) {
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    int n = 0;
    uint32_t value = 0;
    if (c < 0x80) {
      n = 1;
      value = c;
    } else if ((c & 0xE0) == 0xC0 && c >= 0xC2) {
      n = 2;
      value = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3;
      value = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0 && c <= 0xF4) {
      n = 4;
      value = c & 0x07;
    } else {
      return false;
    }
    if (i + n > text.size()) return false;
    for (int k = 1; k < n; ++k) {
      const unsigned char b = static_cast<unsigned char>(text[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      value = value << 6 | (b & 0x3F);
    }
    out->push_back(value);
    i += n;
  }
  return true;
}

// --- CodePointSet --------------------------------------------------------------

CodePointSet CodePointSet::Of(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated) {
  for (auto& [lo, hi] : ranges) {
    lo = std::min(lo, kMaxCodePoint);
    hi = std::min(hi, kMaxCodePoint);
  }
  ranges.erase(
      std::remove_if(ranges.begin(), ranges.end(),
                     [](const std::pair<uint32_t, uint32_t>& r) { return r.first > r.second; }),
      ranges.end());
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<uint32_t, uint32_t>> merged;
  for (const auto& r : ranges) {
    if (!merged.empty() && r.first <= merged.back().second + 1) {
      merged.back().second = std::max(merged.back().second, r.second);
    } else {
      merged.push_back(r);
    }
  }
  CodePointSet set;
  if (negated) {
    uint32_t next = 0;
    for (const auto& [lo, hi] : merged) {
      if (lo > next) set.ranges_.emplace_back(next, lo - 1);
      next = hi + 1;
    }
    if (next <= kMaxCodePoint) set.ranges_.emplace_back(next, kMaxCodePoint);
  } else {
    set.ranges_ = std::move(merged);
  }
  for (const auto& [lo, hi] : set.ranges_) {
    for (uint32_t c = lo; c <= hi && c < 128; ++c) set.ascii_[c >> 6] |= uint64_t{1} << (c & 63);
  }
  return set;
}

bool CodePointSet::ContainsSlow(uint32_t c) const {
  auto it = std::upper_bound(
      ranges_.begin(), ranges_.end(), c,
      [](uint32_t v, const std::pair<uint32_t, uint32_t>& r) { return v < r.first; });
  return it != ranges_.begin() && std::prev(it)->second >= c;
}

bool CodePointSet::Intersects(uint32_t lo, uint32_t hi) const {
  // The first range that ends at or after lo.
  auto it = std::lower_bound(
      ranges_.begin(), ranges_.end(), lo,
      [](const std::pair<uint32_t, uint32_t>& r, uint32_t v) { return r.second < v; });
  return it != ranges_.end() && it->first <= hi;
}

// --- GrammarBuilder ------------------------------------------------------------

uint32_t GrammarBuilder::RuleId(absl::string_view name) {
  auto [it, inserted] = ids_.try_emplace(std::string(name), static_cast<uint32_t>(names_.size()));
  if (inserted) {
    names_.emplace_back(name);
    rules_.emplace_back();
  }
  return it->second;
}

uint32_t GrammarBuilder::NewRule(absl::string_view base) {
  // GBNF names cannot hold '_', so a generated name never meets a user's.
  return RuleId(absl::StrCat(base, "_", names_.size()));
}

void GrammarBuilder::Define(uint32_t rule, std::vector<Sequence> alternatives) {
  MOEFLOW_CHECK(rule < rules_.size() && !alternatives.empty());
  for (const Sequence& s : alternatives) element_count_ += s.size() + 1;
  rules_[rule] = std::move(alternatives);
}

GrammarElement GrammarBuilder::Chars(const CodePointSet& set) {
  for (size_t i = 0; i < char_sets_.size(); ++i) {
    if (char_sets_[i] == set) return {GrammarElement::Kind::kChars, static_cast<uint32_t>(i)};
  }
  char_sets_.push_back(set);
  return {GrammarElement::Kind::kChars, static_cast<uint32_t>(char_sets_.size() - 1)};
}

absl::StatusOr<Grammar> GrammarBuilder::Build(absl::string_view root) {
  if (element_count_ > Grammar::kMaxElements) {
    return absl::InvalidArgumentError(absl::StrCat("the grammar has ", element_count_,
                                                   " elements, more than the limit of ",
                                                   Grammar::kMaxElements));
  }
  const size_t n = rules_.size();
  auto root_it = ids_.find(root);
  const int64_t root_id = root_it == ids_.end() ? -1 : static_cast<int64_t>(root_it->second);
  if (root_id < 0 || rules_[root_id].empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the grammar has no rule '", root, "'"));
  }
  for (size_t r = 0; r < n; ++r) {
    if (rules_[r].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("rule '", names_[r], "' is used but not defined"));
    }
  }
  // Nullable rules (can match the empty string), by fixpoint.
  std::vector<bool> nullable(n, false);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < n; ++r) {
      if (nullable[r]) continue;
      for (const Sequence& s : rules_[r]) {
        const bool all = std::all_of(s.begin(), s.end(), [&](const GrammarElement& e) {
          return e.kind == GrammarElement::Kind::kRule && nullable[e.value];
        });
        if (all) {
          nullable[r] = true;
          changed = true;
          break;
        }
      }
    }
  }
  // Left recursion: a cycle of rules each reachable from the last before
  // any code point is matched.
  std::vector<std::vector<uint32_t>> left(n);
  for (size_t r = 0; r < n; ++r) {
    for (const Sequence& s : rules_[r]) {
      for (const GrammarElement& e : s) {
        if (e.kind != GrammarElement::Kind::kRule) break;
        left[r].push_back(e.value);
        if (!nullable[e.value]) break;
      }
    }
  }
  std::vector<uint8_t> color(n, 0);  // 0 new, 1 on the path, 2 done
  for (size_t start = 0; start < n; ++start) {
    if (color[start] != 0) continue;
    // Iterative DFS: (rule, next edge).
    std::vector<std::pair<uint32_t, size_t>> path = {{static_cast<uint32_t>(start), 0}};
    color[start] = 1;
    while (!path.empty()) {
      auto& [r, edge] = path.back();
      if (edge == left[r].size()) {
        color[r] = 2;
        path.pop_back();
        continue;
      }
      const uint32_t next = left[r][edge++];
      if (color[next] == 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("rule '", names_[next],
                         "' is left-recursive (it can reach itself before matching a character)"));
      }
      if (color[next] == 0) {
        color[next] = 1;
        path.emplace_back(next, 0);
      }
    }
  }
  Grammar g;
  g.root_ = static_cast<uint32_t>(root_id);
  g.rule_names_ = names_;
  g.char_sets_ = char_sets_;
  g.elements_.reserve(element_count_);
  g.rule_alternatives_.push_back(0);
  for (size_t r = 0; r < n; ++r) {
    for (const Sequence& s : rules_[r]) {
      g.alternative_starts_.push_back(static_cast<uint32_t>(g.elements_.size()));
      g.elements_.insert(g.elements_.end(), s.begin(), s.end());
      g.elements_.push_back({GrammarElement::Kind::kEnd, 0});
    }
    g.rule_alternatives_.push_back(static_cast<uint32_t>(g.alternative_starts_.size()));
  }
  return g;
}

// --- Grammar::ToString ---------------------------------------------------------

namespace {

void AppendClassChar(uint32_t c, std::string* out) {
  if (c == '\n') {
    *out += "\\n";
  } else if (c == '\r') {
    *out += "\\r";
  } else if (c == '\t') {
    *out += "\\t";
  } else if (c == '\\' || c == ']' || c == '-' || c == '"' || c == '[') {
    out->push_back('\\');
    out->push_back(static_cast<char>(c));
  } else if (c < 0x20 || c == 0x7F) {
    absl::StrAppendFormat(out, "\\x%02X", c);
  } else if (c > 0xFFFF) {
    absl::StrAppendFormat(out, "\\U%08X", c);
  } else {
    AppendUtf8(c, out);
  }
}

}  // namespace

std::string Grammar::ToString() const {
  std::string out;
  for (uint32_t r = 0; r < rule_count(); ++r) {
    absl::StrAppend(&out, rule_names_[r], " ::=");
    const absl::Span<const uint32_t> alts = alternatives(r);
    for (size_t a = 0; a < alts.size(); ++a) {
      if (a > 0) out += " |";
      for (uint32_t p = alts[a]; elements_[p].kind != GrammarElement::Kind::kEnd; ++p) {
        const GrammarElement& e = elements_[p];
        out += ' ';
        if (e.kind == GrammarElement::Kind::kRule) {
          out += rule_names_[e.value];
          continue;
        }
        out += '[';
        for (const auto& [lo, hi] : char_sets_[e.value].ranges()) {
          AppendClassChar(lo, &out);
          if (hi > lo) {
            out += '-';
            AppendClassChar(hi, &out);
          }
        }
        out += ']';
      }
    }
    out += '\n';
  }
  return out;
}

}  // namespace moeflow::sampling
