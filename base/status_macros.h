// Propagation helpers for absl::Status / absl::StatusOr<T>.
#ifndef LLAMAPRO_BASE_STATUS_MACROS_H_
#define LLAMAPRO_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define LP_CONCAT_INNER_(a, b) a##b
#define LP_CONCAT_(a, b) LP_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define LP_RETURN_IF_ERROR(expr)        \
  do {                                  \
    ::absl::Status lp_status_ = (expr); \
    if (!lp_status_.ok()) [[unlikely]]  \
      return lp_status_;                \
  } while (false)

// `LP_ASSIGN_OR_RETURN(auto x, MakeX());` — unwraps a StatusOr or returns its
// error from the enclosing function.
#define LP_ASSIGN_OR_RETURN(lhs, expr) \
  LP_ASSIGN_OR_RETURN_IMPL_(LP_CONCAT_(lp_statusor_, __LINE__), lhs, expr)
// `lhs` is a declaration or an lvalue and `tmp` a name: neither can be
// parenthesised.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define LP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) [[unlikely]]                     \
    return std::move(tmp).status();               \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)

#endif  // LLAMAPRO_BASE_STATUS_MACROS_H_
