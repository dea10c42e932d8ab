// Invariant checks: the second error tier (CONVENTIONS.md, habit 4).
//
// Recoverable conditions (bad files, bad specs, I/O) return absl::Status.
// A LP_CHECK failure means the program itself is wrong: it prints the
// expression, file and line, and aborts. Checks are always on (also in
// release builds); keep them out of per-element inner loops.
#ifndef LLAMAPRO_BASE_CHECK_H_
#define LLAMAPRO_BASE_CHECK_H_

#include <cstdio>
#include <cstdlib>

namespace llamapro::internal {

[[noreturn]] inline void CheckFailed(const char* expr, const char* file, int line,
                                     const char* message) {
  std::fprintf(stderr, "%s:%d: LP_CHECK(%s) failed%s%s\n", file, line, expr,
               message[0] != '\0' ? ": " : "", message);
  std::fflush(stderr);
  std::abort();
}

}  // namespace llamapro::internal

// LP_CHECK(cond) or LP_CHECK(cond, "what it means").
#define LP_CHECK(cond, ...)                                                         \
  do {                                                                              \
    if (!(cond)) [[unlikely]] {                                                     \
      ::llamapro::internal::CheckFailed(#cond, __FILE__, __LINE__, "" __VA_ARGS__); \
    }                                                                               \
  } while (false)

#endif  // LLAMAPRO_BASE_CHECK_H_
