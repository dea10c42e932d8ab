#include "eval/sandbox.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/file.h"
#include "base/status_macros.h"

namespace llamapro {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uid_t kNobody = 65534;
constexpr long kNobodyArg = kNobody;  // as a syscall() argument
constexpr int kMaxOpenFiles = 64;
// Stragglers get this long, after the main process ended and the group was
// killed, to close the output pipes and die.
constexpr std::chrono::milliseconds kStragglerGrace(1000);
// The end of stderr kept (beyond output_bytes) to recognise a MemoryError.
constexpr size_t kStderrTailBytes = 4096;

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
constexpr uint32_t kAuditArch = 0;  // no filter for this architecture: refuse to run
#endif
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the filter reads the low 32 bits of 64-bit syscall arguments");

// ---------------------------------------------------------------------------
// File descriptors and the temporary directory.

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

absl::Status MakePipe(UniqueFd& read_end, UniqueFd& write_end, absl::string_view what) {
  std::array<int, 2> fds{};
  if (::pipe2(fds.data(), O_CLOEXEC) != 0) {
    return ErrnoStatus("sandbox: cannot create the pipe for", what, errno);
  }
  read_end = UniqueFd(fds[0]);
  write_end = UniqueFd(fds[1]);
  return absl::OkStatus();
}

// Removes the tree at `root` without following symbolic links, making
// directories accessible on the way (the program may have chmod'ed them to 0).
// Iterative and relative to directory descriptors: the program may have built
// a tree deeper than PATH_MAX (mkdir + chdir in a loop), which neither a
// recursive walk nor full path names survive. Only call it once nothing else
// writes into the tree.
absl::Status RemoveTree(const std::string& root) {
  UniqueFd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir.valid()) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoStatus("sandbox: cannot open temporary directory", root, errno);
  }
  ::fchmod(dir.get(), 0700);
  std::vector<std::string> depth;  // names from `root` down to `dir`
  while (true) {
    int listing_fd = ::dup(dir.get());
    DIR* listing = listing_fd < 0 ? nullptr : ::fdopendir(listing_fd);
    if (listing == nullptr) {
      if (listing_fd >= 0) ::close(listing_fd);
      return ErrnoStatus("sandbox: cannot list a directory inside", root, errno);
    }
    ::rewinddir(listing);
    std::string subdir;
    absl::Status status;
    while (const dirent* entry = ::readdir(listing)) {
      const std::string name = entry->d_name;
      if (name == "." || name == "..") continue;
      bool is_dir = entry->d_type == DT_DIR;
      if (entry->d_type == DT_UNKNOWN) {
        struct stat st {};
        is_dir = ::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                 S_ISDIR(st.st_mode);
      }
      if (is_dir) {
        subdir = name;
        break;
      }
      if (::unlinkat(dir.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
        status = ErrnoStatus("sandbox: cannot remove", absl::StrCat(root, "/.../", name), errno);
        break;
      }
    }
    ::closedir(listing);
    LP_RETURN_IF_ERROR(status);
    if (!subdir.empty()) {
      ::fchmodat(dir.get(), subdir.c_str(), 0700, 0);
      UniqueFd child(
          ::openat(dir.get(), subdir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!child.valid()) {
        return ErrnoStatus("sandbox: cannot open", absl::StrCat(root, "/.../", subdir), errno);
      }
      dir = std::move(child);
      depth.push_back(subdir);
      continue;
    }
    if (depth.empty()) break;
    // `dir` is empty: step up and remove it. Nothing renames directories any
    // more, so ".." is the directory we came from.
    UniqueFd parent(::openat(dir.get(), "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!parent.valid()) {
      return ErrnoStatus("sandbox: cannot open the parent of", depth.back(), errno);
    }
    dir = std::move(parent);
    if (::unlinkat(dir.get(), depth.back().c_str(), AT_REMOVEDIR) != 0) {
      return ErrnoStatus("sandbox: cannot remove directory",
                         absl::StrCat(root, "/.../", depth.back()), errno);
    }
    depth.pop_back();
  }
  dir.Reset();
  if (::rmdir(root.c_str()) != 0) {
    return ErrnoStatus("sandbox: cannot remove temporary directory", root, errno);
  }
  return absl::OkStatus();
}

// A fresh directory under $TMPDIR (or /tmp), owned by the sandbox's user and
// removed at destruction unless Remove() was called.
class TempDir {
 public:
  static absl::StatusOr<TempDir> Create(bool owned_by_nobody) {
    const char* env = std::getenv("TMPDIR");
    std::string parent = (env != nullptr && env[0] == '/') ? env : "/tmp";
    while (parent.size() > 1 && parent.back() == '/') parent.pop_back();
    std::string path = JoinPath(parent, "llamapro-sandbox-XXXXXX");
    if (::mkdtemp(path.data()) == nullptr) {
      return ErrnoStatus("sandbox: cannot create temporary directory under", parent, errno);
    }
    TempDir dir(path);
    if (owned_by_nobody && ::chown(path.c_str(), kNobody, kNobody) != 0) {
      return ErrnoStatus("sandbox: cannot chown to 65534:65534 the temporary directory", path,
                         errno);
    }
    return dir;
  }
  TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, "")) {}
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    if (!path_.empty()) RemoveTree(path_).IgnoreError();
  }

  const std::string& path() const { return path_; }
  absl::Status Remove() { return RemoveTree(std::exchange(path_, "")); }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

absl::Status WriteProgram(const std::string& path, absl::string_view program) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus("sandbox: cannot create", path, errno);
  while (!program.empty()) {
    ssize_t n = ::write(fd.get(), program.data(), program.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus("sandbox: cannot write", path, n < 0 ? errno : EIO);
    program.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// The seccomp filter.

sock_filter BpfStmt(uint16_t code, uint32_t k) { return sock_filter{code, 0, 0, k}; }
sock_filter BpfJump(uint16_t code, uint32_t k, uint8_t jump_true, uint8_t jump_false) {
  return sock_filter{code, jump_true, jump_false, k};
}

class FilterBuilder {
 public:
  void LoadArch() { Add(BpfStmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch))); }
  void LoadNr() { Add(BpfStmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr))); }
  // Low 32 bits of argument 0 (int and flag arguments live there).
  void LoadArg0() { Add(BpfStmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args))); }
  void Return(uint32_t action) { Add(BpfStmt(BPF_RET | BPF_K, action)); }
  void Jump(uint16_t op, uint32_t k, uint8_t jump_true, uint8_t jump_false) {
    Add(BpfJump(BPF_JMP | op | BPF_K, k, jump_true, jump_false));
  }

  // With the syscall number in A: `nr` fails with `err`.
  void Deny(long nr, int err) {
    Jump(BPF_JEQ, static_cast<uint32_t>(nr), 0, 1);
    Return(Errno(err));
  }
  // socket()/socketpair(): only AF_UNIX.
  void OnlyUnixSockets(long nr) {
    Jump(BPF_JEQ, static_cast<uint32_t>(nr), 0, 4);
    LoadArg0();
    Jump(BPF_JEQ, AF_UNIX, 0, 1);
    Return(SECCOMP_RET_ALLOW);
    Return(Errno(EACCES));
  }
  // clone(): never new namespaces; new processes only when `processes`.
  void Clone(long nr, bool processes) {
    constexpr uint32_t kNamespaces = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
                                     CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;
    Jump(BPF_JEQ, static_cast<uint32_t>(nr), 0, processes ? 4 : 6);
    LoadArg0();
    Jump(BPF_JSET, kNamespaces, 0, 1);
    Return(Errno(EPERM));
    if (!processes) {
      Jump(BPF_JSET, CLONE_THREAD, 0, 1);
      Return(SECCOMP_RET_ALLOW);
      Return(Errno(EAGAIN));
    } else {
      Return(SECCOMP_RET_ALLOW);
    }
  }
  // kill(-1, sig) would reach every process of the sandbox's user, other
  // sandboxes included.
  void NoBroadcastKill(long nr) {
    Jump(BPF_JEQ, static_cast<uint32_t>(nr), 0, 4);
    LoadArg0();
    Jump(BPF_JEQ, static_cast<uint32_t>(-1), 0, 1);
    Return(Errno(EPERM));
    Return(SECCOMP_RET_ALLOW);
  }

  std::vector<sock_filter> Release() { return std::move(program_); }

 private:
  static uint32_t Errno(int err) {
    return SECCOMP_RET_ERRNO | (static_cast<uint32_t>(err) & SECCOMP_RET_DATA);
  }
  void Add(sock_filter instruction) { program_.push_back(instruction); }
  std::vector<sock_filter> program_;
};

std::vector<sock_filter> BuildSeccompFilter(const SandboxLimits& limits) {
  FilterBuilder f;
  f.LoadArch();
  f.Jump(BPF_JEQ, kAuditArch, 1, 0);
  f.Return(SECCOMP_RET_KILL_PROCESS);  // another ABI (i386 through int 0x80): other numbers
  f.LoadNr();
#if defined(__x86_64__)
  f.Jump(BPF_JGE, 0x40000000 /* __X32_SYSCALL_BIT */, 0, 1);
  f.Return(SECCOMP_RET_ERRNO | ENOSYS);
#endif
  // Interfaces an evaluated program has no use for and that widen what it can
  // reach: namespaces and mounts, other processes' memory, kernel keyrings,
  // BPF, perf, userfaultfd, leaving the process group.
  for (long nr :
       {SYS_unshare, SYS_setns, SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot, SYS_ptrace,
        SYS_process_vm_readv, SYS_process_vm_writev, SYS_keyctl, SYS_add_key, SYS_request_key,
        SYS_bpf, SYS_perf_event_open, SYS_userfaultfd, SYS_setsid, SYS_setpgid}) {
    f.Deny(nr, EPERM);
  }
#ifdef SYS_open_tree
  for (long nr :
       {SYS_open_tree, SYS_move_mount, SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick}) {
    f.Deny(nr, EPERM);
  }
#endif
  // io_uring can create sockets without the socket() syscall; ENOSYS makes
  // libraries fall back to plain system calls.
#ifdef SYS_io_uring_setup
  for (long nr : {SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register}) {
    f.Deny(nr, ENOSYS);
  }
#endif
  if (!limits.network) {
    f.OnlyUnixSockets(SYS_socket);
    f.OnlyUnixSockets(SYS_socketpair);
  }
  const bool processes = limits.max_processes > 1;
  f.Clone(SYS_clone, processes);
  // clone3 passes its flags in memory the filter cannot read; glibc falls
  // back to clone() on ENOSYS.
#ifdef SYS_clone3
  f.Deny(SYS_clone3, ENOSYS);
#endif
  if (!processes) {
#ifdef SYS_fork
    f.Deny(SYS_fork, EAGAIN);
#endif
#ifdef SYS_vfork
    f.Deny(SYS_vfork, EAGAIN);
#endif
  }
  f.NoBroadcastKill(SYS_kill);
  f.Return(SECCOMP_RET_ALLOW);
  return f.Release();
}

// ---------------------------------------------------------------------------
// The child, between fork and exec. Only async-signal-safe calls: the caller
// may have other threads, whose locks (malloc's included) fork copied held.

enum class ChildStep : int32_t {
  kMoveFds,
  kStdio,
  kSignals,
  kSetsid,
  kRlimit,
  kNetNamespace,
  kSetgroups,
  kSetgid,
  kSetuid,
  kChdir,
  kDeathSignal,
  kParentGone,
  kNoNewPrivs,
  kSeccomp,
  kExec,
};

// One record on the report pipe; the pipe closes on exec (O_CLOEXEC), so
// EOF without a fatal record means the interpreter started.
struct ChildReport {
  int32_t step;
  int32_t err;
  int32_t fatal;
  int32_t arg;  // kRlimit: the resource
};

struct RlimitSetting {
  __rlimit_resource_t resource;
  rlim_t soft;
  rlim_t hard;
};

// Everything the child needs, prepared before fork.
struct ChildPlan {
  const char* python;
  char* const* argv;
  char* const* envp;
  const char* dir;
  bool drop_to_nobody;
  bool want_network_namespace;
  std::array<RlimitSetting, 5> rlimits;
  rlim_t nproc;  // 0: leave RLIMIT_NPROC alone
  sock_fprog filter;
  pid_t parent;
  int stdin_fd;
  int stdout_fd;
  int stderr_fd;
  int report_fd;
};

void Report(int fd, ChildStep step, int err, bool fatal, int arg = 0) {
  ChildReport report{static_cast<int32_t>(step), err, fatal ? 1 : 0, arg};
  while (::write(fd, &report, sizeof(report)) < 0 && errno == EINTR) {
  }
}

[[noreturn]] void Fail(int fd, ChildStep step, int err, int arg = 0) {
  Report(fd, step, err, /*fatal=*/true, arg);
  ::_exit(127);
}

// close_range(first, ~0U), or a loop on kernels older than 5.9.
void CloseDescriptorsFrom(int first) {
#ifdef SYS_close_range
  if (::syscall(SYS_close_range, static_cast<unsigned>(first), ~0U, 0U) == 0) return;
#endif
  rlimit nofile{};
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  const rlim_t limit = std::min<rlim_t>(nofile.rlim_cur, rlim_t{1} << 20);
  for (auto fd = static_cast<rlim_t>(first); fd < limit; ++fd) ::close(static_cast<int>(fd));
}

[[noreturn]] void RunChild(const ChildPlan& plan) {
  // Lift every descriptor we keep above 2 first: a caller without stdio may
  // have been given pipe ends 0-2.
  const int report = ::fcntl(plan.report_fd, F_DUPFD_CLOEXEC, 3);
  if (report < 0) ::_exit(127);
  const int in = ::fcntl(plan.stdin_fd, F_DUPFD_CLOEXEC, 3);
  const int out = ::fcntl(plan.stdout_fd, F_DUPFD_CLOEXEC, 3);
  const int err = ::fcntl(plan.stderr_fd, F_DUPFD_CLOEXEC, 3);
  if (in < 0 || out < 0 || err < 0) Fail(report, ChildStep::kMoveFds, errno);
  if (::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) {
    Fail(report, ChildStep::kStdio, errno);
  }
  const int report_fd = 3;
  if (report != 3 && ::dup3(report, 3, O_CLOEXEC) < 0) Fail(report, ChildStep::kMoveFds, errno);
  // Everything else the caller's process had open goes, O_CLOEXEC or not.
  CloseDescriptorsFrom(4);

  sigset_t none;
  ::sigemptyset(&none);
  if (::sigprocmask(SIG_SETMASK, &none, nullptr) != 0) Fail(report_fd, ChildStep::kSignals, errno);
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &default_action, nullptr);
  }

  // Its own session: a process group to kill as a whole, and no controlling
  // terminal to open (/dev/tty) and inject input into.
  if (::setsid() < 0) Fail(report_fd, ChildStep::kSetsid, errno);

  for (const RlimitSetting& r : plan.rlimits) {
    rlimit value{r.soft, r.hard};
    if (::setrlimit(r.resource, &value) != 0) {
      Fail(report_fd, ChildStep::kRlimit, errno, r.resource);
    }
  }

  bool network_namespace = false;
  int namespace_error = 0;
  if (plan.want_network_namespace && plan.drop_to_nobody) {
    network_namespace = ::unshare(CLONE_NEWNET) == 0;
    if (!network_namespace) namespace_error = errno;
  }
  if (plan.drop_to_nobody) {
    // Raw system calls: glibc's wrappers would try to change the credentials
    // of every thread of the caller, which _Fork left behind (and hang).
    if (::syscall(SYS_setgroups, 0, nullptr) != 0) Fail(report_fd, ChildStep::kSetgroups, errno);
    if (::syscall(SYS_setresgid, kNobodyArg, kNobodyArg, kNobodyArg) != 0) {
      Fail(report_fd, ChildStep::kSetgid, errno);
    }
    if (::syscall(SYS_setresuid, kNobodyArg, kNobodyArg, kNobodyArg) != 0) {
      Fail(report_fd, ChildStep::kSetuid, errno);
    }
  }
  if (plan.want_network_namespace && !network_namespace) {
    // Unprivileged: a user namespace (which grants the right to make the
    // network namespace inside it) with no uid mapping.
    network_namespace = ::unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0;
    if (!network_namespace) {
      Report(report_fd, ChildStep::kNetNamespace, namespace_error != 0 ? namespace_error : errno,
             /*fatal=*/false);
    }
  }
  if (plan.nproc > 0) {
    // After the uid change: the limit counts the tasks of the real uid.
    rlimit value{plan.nproc, plan.nproc};
    if (::setrlimit(RLIMIT_NPROC, &value) != 0) {
      Fail(report_fd, ChildStep::kRlimit, errno, RLIMIT_NPROC);
    }
  }
  if (::chdir(plan.dir) != 0) Fail(report_fd, ChildStep::kChdir, errno);

  // After every credential change, which clears it.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
    Fail(report_fd, ChildStep::kDeathSignal, errno);
  }
  if (::getppid() != plan.parent) Fail(report_fd, ChildStep::kParentGone, 0);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    Fail(report_fd, ChildStep::kNoNewPrivs, errno);
  }
  if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &plan.filter, 0, 0) != 0) {
    Fail(report_fd, ChildStep::kSeccomp, errno);
  }
  ::execve(plan.python, plan.argv, plan.envp);
  Fail(report_fd, ChildStep::kExec, errno);
}

std::string DescribeChildStep(const ChildReport& report, const std::string& python,
                              const std::string& dir) {
  switch (static_cast<ChildStep>(report.step)) {
    case ChildStep::kMoveFds:
      return "move file descriptors";
    case ChildStep::kStdio:
      return "redirect stdin, stdout and stderr";
    case ChildStep::kSignals:
      return "reset the signal mask";
    case ChildStep::kSetsid:
      return "start a new session (setsid)";
    case ChildStep::kRlimit:
      switch (report.arg) {
        case RLIMIT_CPU:
          return "set RLIMIT_CPU";
        case RLIMIT_AS:
          return "set RLIMIT_AS";
        case RLIMIT_FSIZE:
          return "set RLIMIT_FSIZE";
        case RLIMIT_NOFILE:
          return "set RLIMIT_NOFILE";
        case RLIMIT_CORE:
          return "set RLIMIT_CORE";
        case RLIMIT_NPROC:
          return "set RLIMIT_NPROC";
        default:
          return absl::StrCat("set resource limit ", report.arg);
      }
    case ChildStep::kNetNamespace:
      return "create a network namespace";
    case ChildStep::kSetgroups:
      return "drop supplementary groups";
    case ChildStep::kSetgid:
      return "switch to gid 65534";
    case ChildStep::kSetuid:
      return "switch to uid 65534";
    case ChildStep::kChdir:
      return absl::StrCat("enter ", dir);
    case ChildStep::kDeathSignal:
      return "set the parent-death signal";
    case ChildStep::kParentGone:
      return "start: the calling process exited";
    case ChildStep::kNoNewPrivs:
      return "set no_new_privs";
    case ChildStep::kSeccomp:
      return "install the seccomp filter";
    case ChildStep::kExec:
      return absl::StrCat("execute ", python);
  }
  return absl::StrCat("complete setup step ", report.step);
}

// ---------------------------------------------------------------------------
// The parent: output, limits, reaping.

struct OutputStream {
  UniqueFd fd;
  std::string* kept;
  int64_t* dropped;
  int64_t limit;
  std::string* tail;  // nullptr, or the last kStderrTailBytes seen

  // One read(); false at EOF or on error.
  bool ReadOnce() {
    std::array<char, 65536> buffer;
    ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) return false;
    const auto size = static_cast<size_t>(n);
    int64_t room = std::max<int64_t>(0, limit - static_cast<int64_t>(kept->size()));
    size_t keep = std::min<size_t>(size, static_cast<size_t>(room));
    kept->append(buffer.data(), keep);
    *dropped += static_cast<int64_t>(size - keep);
    if (tail != nullptr) {
      tail->append(buffer.data(), size);
      if (tail->size() > 2 * kStderrTailBytes) tail->erase(0, tail->size() - kStderrTailBytes);
    }
    return true;
  }
};

void KillGroup(pid_t pid) {
  ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);  // in case it has not reached setsid() yet
}

// Whether the main process has ended, without reaping it: while it is a
// zombie its pid, and so its process group id, cannot be reused.
bool HasExited(pid_t pid, bool block) {
  while (true) {
    siginfo_t info{};
    int rc =
        ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT | (block ? 0 : WNOHANG));
    if (rc == 0) return info.si_pid == pid;
    if (errno != EINTR) return true;  // ECHILD: someone else reaped it; nothing to wait for
  }
}

// Live (not zombie) processes whose process group is `pgid`, from /proc.
int LiveProcessesInGroup(pid_t pgid) {
  int count = 0;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return 0;
  while (const dirent* entry = ::readdir(proc)) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    UniqueFd fd(::open(absl::StrCat("/proc/", pid, "/stat").c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) continue;
    std::array<char, 512> buffer;
    ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n <= 0) continue;
    auto stat = absl::string_view(buffer.data(), static_cast<size_t>(n));
    // "pid (comm) state ppid pgrp ...": comm may contain anything but ends at the last ')'.
    size_t close = stat.rfind(')');
    if (close == absl::string_view::npos) continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(stat.substr(close + 1), ' ', absl::SkipEmpty());
    int group = 0;
    if (fields.size() < 3 || !absl::SimpleAtoi(fields[2], &group) || group != pgid) continue;
    if (fields[0] != "Z" && fields[0] != "X") ++count;
  }
  ::closedir(proc);
  return count;
}

bool ReportsMemoryExhaustion(absl::string_view stderr_tail) {
  std::vector<absl::string_view> lines = absl::StrSplit(stderr_tail, '\n', absl::SkipWhitespace());
  const size_t first = lines.size() > 5 ? lines.size() - 5 : 0;
  for (size_t i = first; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    if (absl::StartsWith(line, "MemoryError") ||
        absl::StrContains(line, "Cannot allocate memory") ||
        absl::StrContains(line, "out of memory")) {
      return true;
    }
  }
  return false;
}

std::string SignalName(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev != nullptr ? absl::StrCat("SIG", abbrev) : absl::StrCat("signal ", sig);
}

absl::Status ValidateLimits(const SandboxLimits& limits, const std::string& python) {
  auto invalid = [](absl::string_view field, auto value) {
    return absl::InvalidArgumentError(
        absl::StrCat("sandbox: SandboxLimits.", field, " must be positive, got ", value));
  };
  if (!(limits.wall_seconds > 0) || !std::isfinite(limits.wall_seconds)) {
    return invalid("wall_seconds", limits.wall_seconds);
  }
  if (!(limits.cpu_seconds > 0) || !std::isfinite(limits.cpu_seconds)) {
    return invalid("cpu_seconds", limits.cpu_seconds);
  }
  if (limits.memory_bytes <= 0) return invalid("memory_bytes", limits.memory_bytes);
  if (limits.file_bytes <= 0) return invalid("file_bytes", limits.file_bytes);
  if (limits.max_processes <= 0) return invalid("max_processes", limits.max_processes);
  if (limits.output_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sandbox: SandboxLimits.output_bytes must not be negative, got ", limits.output_bytes));
  }
  if (python.empty() || python[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("sandbox: the interpreter path must be absolute, got \"", python, "\""));
  }
  if (kAuditArch == 0) {
    return absl::UnimplementedError(
        "sandbox: no seccomp filter for this CPU architecture (x86_64 and aarch64 only)");
  }
  return absl::OkStatus();
}

std::vector<char*> PointersTo(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  pointers.reserve(strings.size() + 1);
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

double Seconds(timeval tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec * 1e-6; }

}  // namespace

absl::string_view SandboxOutcomeName(SandboxOutcome outcome) {
  switch (outcome) {
    case SandboxOutcome::kPassed:
      return "passed";
    case SandboxOutcome::kFailed:
      return "failed";
    case SandboxOutcome::kTimedOut:
      return "timed_out";
    case SandboxOutcome::kMemoryExceeded:
      return "memory_exceeded";
    case SandboxOutcome::kKilled:
      return "killed";
    case SandboxOutcome::kError:
      return "error";
  }
  return "unknown";
}

absl::StatusOr<SandboxResult> RunPythonSandboxed(absl::string_view program,
                                                 const SandboxLimits& limits,
                                                 const std::string& python) {
  LP_RETURN_IF_ERROR(ValidateLimits(limits, python));
  const bool as_root = ::geteuid() == 0;
  LP_ASSIGN_OR_RETURN(TempDir dir, TempDir::Create(/*owned_by_nobody=*/as_root));
  const std::string main_py = JoinPath(dir.path(), "main.py");
  LP_RETURN_IF_ERROR(WriteProgram(main_py, program));

  std::vector<std::string> argv_strings = {python, "-I", "-S", "-B", main_py};
  std::vector<std::string> env_strings = {"PATH=/usr/bin:/bin", "LANG=C.UTF-8",
                                          absl::StrCat("HOME=", dir.path())};
  std::vector<char*> argv = PointersTo(argv_strings);
  std::vector<char*> envp = PointersTo(env_strings);
  std::vector<sock_filter> filter = BuildSeccompFilter(limits);

  UniqueFd stdin_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!stdin_fd.valid()) return ErrnoStatus("sandbox: cannot open", "/dev/null", errno);
  UniqueFd out_read, out_write, err_read, err_write, report_read, report_write;
  LP_RETURN_IF_ERROR(MakePipe(out_read, out_write, "stdout"));
  LP_RETURN_IF_ERROR(MakePipe(err_read, err_write, "stderr"));
  LP_RETURN_IF_ERROR(MakePipe(report_read, report_write, "setup reports"));

  const auto cpu_limit = static_cast<rlim_t>(std::ceil(limits.cpu_seconds));
  ChildPlan plan{
      .python = python.c_str(),
      .argv = argv.data(),
      .envp = envp.data(),
      .dir = dir.path().c_str(),
      .drop_to_nobody = as_root,
      .want_network_namespace = !limits.network,
      .rlimits = {{
          {RLIMIT_CPU, cpu_limit, cpu_limit + 1},
          {RLIMIT_AS, static_cast<rlim_t>(limits.memory_bytes),
           static_cast<rlim_t>(limits.memory_bytes)},
          {RLIMIT_FSIZE, static_cast<rlim_t>(limits.file_bytes),
           static_cast<rlim_t>(limits.file_bytes)},
          {RLIMIT_NOFILE, kMaxOpenFiles, kMaxOpenFiles},
          {RLIMIT_CORE, 0, 0},
      }},
      .nproc = limits.max_processes > 1 ? static_cast<rlim_t>(limits.max_processes) : 0,
      .filter = {static_cast<unsigned short>(filter.size()), filter.data()},
      .parent = ::getpid(),
      .stdin_fd = stdin_fd.get(),
      .stdout_fd = out_write.get(),
      .stderr_fd = err_write.get(),
      .report_fd = report_write.get(),
  };

  SandboxResult result;
  const Clock::time_point start = Clock::now();
  // _Fork, not fork: no atfork handlers (other libraries' handlers may take
  // locks or restart thread pools), and it is async-signal-safe.
  const pid_t pid = ::_Fork();
  if (pid == 0) RunChild(plan);
  if (pid < 0) return ErrnoStatus("sandbox: cannot fork to run", python, errno);
  result.pid = pid;
  stdin_fd.Reset();
  out_write.Reset();
  err_write.Reset();
  report_write.Reset();

  UniqueFd pidfd;
#ifdef SYS_pidfd_open
  pidfd = UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
#endif
  std::string stderr_tail;
  std::string reports;
  int64_t report_dropped = 0;
  std::array<OutputStream, 3> streams = {{
      {std::move(out_read), &result.stdout_text, &result.stdout_dropped_bytes, limits.output_bytes,
       nullptr},
      {std::move(err_read), &result.stderr_text, &result.stderr_dropped_bytes, limits.output_bytes,
       &stderr_tail},
      {std::move(report_read), &reports, &report_dropped, 64 * sizeof(ChildReport), nullptr},
  }};

  // Reads whatever is ready on the open streams within `timeout_ms`; returns
  // whether the pidfd reported the exit (always false without a pidfd).
  auto pump = [&](int timeout_ms) {
    std::array<pollfd, 4> fds{};
    std::array<OutputStream*, 4> owners{};
    nfds_t n = 0;
    for (OutputStream& s : streams) {
      if (!s.fd.valid()) continue;
      owners[n] = &s;
      fds[n++] = pollfd{s.fd.get(), POLLIN, 0};
    }
    const nfds_t pidfd_index = n;
    if (pidfd.valid()) fds[n++] = pollfd{pidfd.get(), POLLIN, 0};
    if (::poll(fds.data(), n, timeout_ms) <= 0) return false;
    for (nfds_t i = 0; i < pidfd_index; ++i) {
      if (fds[i].revents != 0 && !owners[i]->ReadOnce()) owners[i]->fd.Reset();
    }
    return pidfd.valid() && fds[pidfd_index].revents != 0;
  };

  const auto wall = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(limits.wall_seconds));
  const Clock::time_point deadline = start + wall;
  bool wall_killed = false;
  while (true) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      if (HasExited(pid, /*block=*/false)) break;
      KillGroup(pid);
      wall_killed = true;
      HasExited(pid, /*block=*/true);
      break;
    }
    auto remaining_ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    // Without a pidfd, look at the process every 10 ms.
    int timeout_ms = static_cast<int>(std::min<int64_t>(remaining_ms, pidfd.valid() ? 60000 : 10));
    bool exited = pump(timeout_ms);
    if ((exited || !pidfd.valid()) && HasExited(pid, /*block=*/false)) break;
  }
  result.wall_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // Stragglers (only possible with max_processes > 1): kill the group while
  // the zombie main process pins its id, then take what they wrote.
  KillGroup(pid);
  const Clock::time_point grace_end = Clock::now() + kStragglerGrace;
  while (std::any_of(streams.begin(), streams.end(),
                     [](const OutputStream& s) { return s.fd.valid(); })) {
    const Clock::time_point now = Clock::now();
    if (now >= grace_end) {
      absl::StrAppend(&result.detail,
                      "; output pipes still open after the process group was killed");
      break;
    }
    pump(static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(grace_end - now).count()));
  }

  int status = 0;
  rusage usage{};
  while (::wait4(pid, &status, 0, &usage) < 0) {
    if (errno != EINTR) {
      return ErrnoStatus("sandbox: cannot wait for the process running", main_py, errno);
    }
  }
  result.cpu_seconds = Seconds(usage.ru_utime) + Seconds(usage.ru_stime);
  if (limits.max_processes > 1) {
    // Killed stragglers die asynchronously; return once none is alive. They
    // were reparented to init, which reaps the zombies in its own time.
    const Clock::time_point give_up = Clock::now() + kStragglerGrace;
    while (LiveProcessesInGroup(pid) > 0) {
      if (Clock::now() >= give_up) {
        absl::StrAppend(&result.detail, "; processes of group ", pid, " still alive");
        break;
      }
      ::kill(-pid, SIGKILL);
      ::usleep(1000);
    }
  }

  std::string notes = std::move(result.detail);
  result.detail.clear();
  bool namespace_missing = false;
  for (size_t off = 0; off + sizeof(ChildReport) <= reports.size(); off += sizeof(ChildReport)) {
    ChildReport report{};
    std::memcpy(&report, reports.data() + off, sizeof(report));
    std::string what = DescribeChildStep(report, python, dir.path());
    if (report.fatal != 0) {
      result.outcome = SandboxOutcome::kError;
      result.detail =
          absl::StrCat("sandbox: cannot ", what,
                       report.err != 0 ? absl::StrCat(": ", std::strerror(report.err)) : "");
    } else if (static_cast<ChildStep>(report.step) == ChildStep::kNetNamespace) {
      namespace_missing = true;
      absl::StrAppend(&notes, "; no network namespace (cannot ", what, ": ",
                      std::strerror(report.err), "), sockets are refused by seccomp only");
    }
  }
  result.network_namespace = !limits.network && !namespace_missing;

  if (WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
    result.exit_code = -1;
  } else if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  }
  if (result.detail.empty()) {
    const int sig = result.signal;
    if (result.signal == 0) {
      if (result.exit_code == 0) {
        result.outcome = SandboxOutcome::kPassed;
        result.detail = "exited with status 0";
      } else if (ReportsMemoryExhaustion(stderr_tail)) {
        result.outcome = SandboxOutcome::kMemoryExceeded;
        result.detail = absl::StrFormat("MemoryError under the address-space limit of %d bytes",
                                        limits.memory_bytes);
      } else {
        result.outcome = SandboxOutcome::kFailed;
        result.detail = absl::StrCat("exited with status ", result.exit_code);
      }
    } else if (wall_killed && sig == SIGKILL) {
      result.outcome = SandboxOutcome::kTimedOut;
      result.detail = absl::StrCat("killed at the wall-clock limit of ", limits.wall_seconds, " s");
    } else if (sig == SIGXCPU ||
               (sig == SIGKILL && result.cpu_seconds >= static_cast<double>(cpu_limit))) {
      result.outcome = SandboxOutcome::kTimedOut;
      result.detail =
          absl::StrCat("reached the CPU limit of ", cpu_limit, " s (", SignalName(sig), ")");
    } else if ((sig == SIGSEGV || sig == SIGABRT || sig == SIGBUS) &&
               ReportsMemoryExhaustion(stderr_tail)) {
      result.outcome = SandboxOutcome::kMemoryExceeded;
      result.detail = absl::StrFormat("%s after running out of memory (limit %d bytes)",
                                      SignalName(sig), limits.memory_bytes);
    } else {
      result.outcome = SandboxOutcome::kKilled;
      result.detail = absl::StrCat("killed by ", SignalName(sig));
    }
  }
  absl::StrAppend(&result.detail, notes);

  absl::Status removed = dir.Remove();
  if (!removed.ok()) absl::StrAppend(&result.detail, "; ", removed.message());
  return result;
}

}  // namespace llamapro
