// CHECK macros for programmer errors (broken invariants inside moeflow).
//
// Bad input from outside (files, flags, RPCs) is answered with absl::Status,
// never with these. A failed check prints file:line and the condition to stderr
// and aborts. Thread-safe. (Debian's Abseil 20220623 predates absl/log.)
#ifndef MOEFLOW_BASE_CHECK_H_
#define MOEFLOW_BASE_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define MOEFLOW_CHECK(cond)                                                         \
  do {                                                                              \
    if (__builtin_expect(!(cond), 0)) {                                             \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

#define MOEFLOW_CHECK_OK(expr)                                                            \
  do {                                                                                    \
    const auto& moeflow_check_status_ = (expr);                                           \
    if (__builtin_expect(!moeflow_check_status_.ok(), 0)) {                               \
      std::fprintf(stderr, "%s:%d: CHECK_OK failed: %s: %s\n", __FILE__, __LINE__, #expr, \
                   std::string(moeflow_check_status_.ToString()).c_str());                \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

// Returns early from a function returning absl::Status / StatusOr on error.
#define MOEFLOW_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    auto moeflow_status_ = (expr);                     \
    if (!moeflow_status_.ok()) return moeflow_status_; \
  } while (0)

#define MOEFLOW_CONCAT_INNER_(a, b) a##b
#define MOEFLOW_CONCAT_(a, b) MOEFLOW_CONCAT_INNER_(a, b)
#define MOEFLOW_ASSIGN_OR_RETURN(lhs, expr) \
  MOEFLOW_ASSIGN_OR_RETURN_IMPL_(MOEFLOW_CONCAT_(moeflow_statusor_, __LINE__), lhs, expr)
#define MOEFLOW_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return tmp.status();                  \
  lhs = std::move(tmp).value()

#endif  // MOEFLOW_BASE_CHECK_H_
