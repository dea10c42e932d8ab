// Runs untrusted, model-generated Python (the `code` evaluation: HumanEval and
// MBPP pass@1) in a confined child process. Linux only (x86_64, aarch64).
//
// What confines the program (docs/sandbox.md has the full account):
//   * its own session and process group, killed as a whole (SIGKILL) at the
//     wall-clock limit and again after it exits, so no process outlives a run;
//   * rlimits: CPU, address space, file size, open files (64), no core dumps,
//     and processes (RLIMIT_NPROC, only when max_processes > 1);
//   * a seccomp filter (always): sockets other than AF_UNIX fail with EACCES
//     unless `network`; with max_processes == 1, fork/vfork and clone without
//     CLONE_THREAD fail with EAGAIN (threads still work); namespaces, mounts,
//     ptrace, setsid/setpgid, io_uring and a few other kernel interfaces fail;
//   * no network: an empty network namespace where the kernel allows one
//     (as root, or through an unprivileged user namespace), plus the filter;
//   * as root: runs as uid/gid 65534 (nobody) with no supplementary groups;
//   * a fresh temporary working directory (also HOME), removed afterwards; an
//     environment of PATH, LANG and HOME only; stdin from /dev/null; no other
//     inherited file descriptors; no_new_privs; SIGKILL if the caller dies.
//
// It is NOT a complete isolation boundary: the program still sees the host's
// file system with the rights of its user (nobody as root, the caller's user
// otherwise), can write to world-writable places such as /tmp, and talks to
// the host kernel directly. Run evaluations as root (or in a container) so the
// program runs as nobody.
#ifndef LLAMAPRO_EVAL_SANDBOX_H_
#define LLAMAPRO_EVAL_SANDBOX_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llamapro {

struct SandboxLimits {
  // Wall-clock limit, from fork to exit; the whole process group is SIGKILLed.
  double wall_seconds = 10;
  // RLIMIT_CPU, rounded up to whole seconds: SIGXCPU at the limit, SIGKILL one
  // second later.
  double cpu_seconds = 10;
  // RLIMIT_AS: address space, which Python reports as MemoryError.
  int64_t memory_bytes = int64_t{512} << 20;
  // RLIMIT_FSIZE: largest file the program may write (writes beyond fail with
  // EFBIG; Python ignores SIGXFSZ).
  int64_t file_bytes = int64_t{16} << 20;
  // 1: no new processes at all (seccomp), threads allowed. Above 1: process
  // creation is allowed and RLIMIT_NPROC is set to this value; the kernel
  // counts every thread and process of the sandbox's real user system-wide
  // (nobody when the caller is root), so concurrent runs share it.
  int max_processes = 1;
  // Bytes of stdout and of stderr kept, each; the rest is read, counted in
  // SandboxResult::*_dropped_bytes, and dropped.
  int64_t output_bytes = int64_t{64} << 10;
  // false: no network (empty network namespace where possible, and seccomp
  // refuses every socket family but AF_UNIX). true: the host's network.
  bool network = false;
};

enum class SandboxOutcome {
  kPassed,          // exited with status 0
  kFailed,          // exited with a nonzero status (an exception, a failed assert)
  kTimedOut,        // wall-clock or CPU limit reached
  kMemoryExceeded,  // MemoryError, or a crash that reports memory exhaustion
  kKilled,          // another signal
  kError,           // the sandbox could not start the program (see `detail`)
};

// "passed", "failed", "timed_out", "memory_exceeded", "killed", "error".
absl::string_view SandboxOutcomeName(SandboxOutcome outcome);

struct SandboxResult {
  SandboxOutcome outcome = SandboxOutcome::kError;
  int exit_code = -1;  // when it exited; -1 when killed by a signal
  int signal = 0;      // the signal that ended it; 0 when it exited
  double wall_seconds = 0;
  double cpu_seconds = 0;  // user + system time of the main process
  std::string stdout_text;
  std::string stderr_text;
  int64_t stdout_dropped_bytes = 0;
  int64_t stderr_dropped_bytes = 0;
  // Whether the program ran in its own, empty network namespace (only
  // meaningful when limits.network is false; seccomp blocks sockets anyway).
  bool network_namespace = false;
  // The main process's id, which was also its process group and session id.
  // It has been reaped when RunPythonSandboxed returns; for tests and logs.
  pid_t pid = -1;
  // Why it ended, in words, plus notes on weakened confinement.
  std::string detail;
};

// Runs `python -I -S -B <tmpdir>/main.py` with `program` as main.py inside a
// fresh directory under $TMPDIR (or /tmp), with the environment PATH=/usr/bin:
// /bin, LANG=C.UTF-8, HOME=<tmpdir>, and the limits above; waits for it and
// removes the directory.
//
// Returns an error status when the limits are invalid or the caller's side of
// the sandbox cannot be set up (temporary directory, pipes, fork); a result
// with outcome kError when the child could not be confined or the interpreter
// not executed (detail names the step, e.g. "cannot execute /usr/bin/python3:
// No such file or directory"). kError is a fault of the machine, not of the
// program: do not count it as a failed sample.
//
// Thread-safe: concurrent calls are independent. Blocks the calling thread
// for up to about wall_seconds + 2 s (stragglers of max_processes > 1 get up
// to 2 s to die), plus removing the directory. Uses fork(): in a process with
// a large address space expect a few milliseconds per GiB for page tables.
// The caller must not ignore SIGCHLD or reap children it did not start
// (waitpid(-1, ...)), or the exit status is lost.
absl::StatusOr<SandboxResult> RunPythonSandboxed(absl::string_view program,
                                                 const SandboxLimits& limits,
                                                 const std::string& python = "/usr/bin/python3");

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_SANDBOX_H_
