// The sandbox for model-generated Python: each test runs a real interpreter
// under real limits and checks what the program could and could not do.
#include "eval/sandbox.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace llamapro {
namespace {

constexpr char kPython[] = "/usr/bin/python3";

std::string Describe(const SandboxResult& r) {
  return absl::StrCat("outcome=", SandboxOutcomeName(r.outcome), " exit=", r.exit_code,
                      " signal=", r.signal, " wall=", r.wall_seconds, "s detail=\"", r.detail,
                      "\"\nstdout:\n", r.stdout_text, "\nstderr:\n", r.stderr_text);
}

// Live (not zombie) processes whose process group is `pgid`.
int LiveProcessesInGroup(pid_t pgid) {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream fields(stat.substr(close + 1));
    std::string state;
    pid_t ppid = 0;
    pid_t group = 0;
    if (fields >> state >> ppid >> group && group == pgid && state != "Z" && state != "X") ++count;
  }
  return count;
}

bool GroupIsGone(pid_t pgid) { return ::kill(-pgid, 0) == -1 && errno == ESRCH; }

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(kPython, X_OK) != 0) GTEST_SKIP() << kPython << " is not installed";
  }

  static SandboxResult Run(absl::string_view program, const SandboxLimits& limits = {}) {
    absl::StatusOr<SandboxResult> result = RunPythonSandboxed(program, limits, kPython);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *std::move(result) : SandboxResult{};
  }
};

TEST_F(SandboxTest, PassingProgramPassesAndItsOutputIsCaptured) {
  SandboxResult r =
      Run("import sys\nprint('hello from the sandbox')\nprint('note', file=sys.stderr)\n");
  EXPECT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.signal, 0);
  EXPECT_EQ(r.stdout_text, "hello from the sandbox\n");
  EXPECT_EQ(r.stderr_text, "note\n");
  EXPECT_GT(r.pid, 0);
  EXPECT_TRUE(GroupIsGone(r.pid));
}

TEST_F(SandboxTest, FailedAssertionFailsWithTracebackInStderr) {
  SandboxResult r =
      Run("def candidate(x):\n    return x + 1\n\n"
          "assert candidate(1) == 2\nassert candidate(2) == 4, 'candidate(2)'\n");
  EXPECT_EQ(r.outcome, SandboxOutcome::kFailed) << Describe(r);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("Traceback (most recent call last)"), std::string::npos);
  EXPECT_NE(r.stderr_text.find("AssertionError: candidate(2)"), std::string::npos) << Describe(r);
}

TEST_F(SandboxTest, NonzeroExitStatusIsReported) {
  SandboxResult r = Run("import sys\nsys.exit(3)\n");
  EXPECT_EQ(r.outcome, SandboxOutcome::kFailed) << Describe(r);
  EXPECT_EQ(r.exit_code, 3);
}

TEST_F(SandboxTest, BusyLoopTimesOutAtTheCpuLimit) {
  const auto start = std::chrono::steady_clock::now();
  SandboxResult r = Run("while True:\n    pass\n", {.wall_seconds = 2, .cpu_seconds = 1});
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.outcome, SandboxOutcome::kTimedOut) << Describe(r);
  EXPECT_EQ(r.signal, SIGXCPU) << "ended by the wall-clock limit, not the CPU limit";
  EXPECT_LT(elapsed, 5.0);
  EXPECT_TRUE(GroupIsGone(r.pid));
}

TEST_F(SandboxTest, SleepingProgramTimesOutAtTheWallClockLimit) {
  const auto start = std::chrono::steady_clock::now();
  SandboxResult r = Run("import time\ntime.sleep(60)\n", {.wall_seconds = 1, .cpu_seconds = 10});
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.outcome, SandboxOutcome::kTimedOut) << Describe(r);
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_GE(r.wall_seconds, 1.0);
  EXPECT_LT(elapsed, 3.0);
  EXPECT_TRUE(GroupIsGone(r.pid));
}

TEST_F(SandboxTest, HugeAllocationExceedsMemory) {
  SandboxResult r = Run("x = bytearray(1 << 34)\nprint(len(x))\n");
  EXPECT_EQ(r.outcome, SandboxOutcome::kMemoryExceeded) << Describe(r);
  EXPECT_EQ(r.stdout_text, "");
}

TEST_F(SandboxTest, GrowingListExceedsMemory) {
  // 1 GiB in 1 MiB pieces, which the machine would grant without the limit.
  SandboxResult r =
      Run("chunks = []\nfor _ in range(1024):\n    chunks.append(bytearray(1 << 20))\n"
          "print('allocated')\n",
          {.memory_bytes = int64_t{256} << 20});
  EXPECT_EQ(r.outcome, SandboxOutcome::kMemoryExceeded) << Describe(r);
}

TEST_F(SandboxTest, ForkBombFailsQuicklyAndLeavesNoProcess) {
  const auto start = std::chrono::steady_clock::now();
  SandboxResult r = Run("import os\nwhile True:\n    os.fork()\n");
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.outcome, SandboxOutcome::kFailed) << Describe(r);
  EXPECT_NE(r.stderr_text.find("BlockingIOError"), std::string::npos) << Describe(r);
  EXPECT_LT(elapsed, 3.0);
  EXPECT_TRUE(GroupIsGone(r.pid));
  EXPECT_EQ(LiveProcessesInGroup(r.pid), 0);
}

TEST_F(SandboxTest, SubprocessCannotStartWithOneProcess) {
  SandboxResult r = Run("import subprocess\nsubprocess.run(['/bin/true'])\nprint('started')\n");
  EXPECT_EQ(r.outcome, SandboxOutcome::kFailed) << Describe(r);
  EXPECT_EQ(r.stdout_text, "");
}

TEST_F(SandboxTest, ThreadsStillWorkWithOneProcess) {
  SandboxResult r =
      Run("import threading\nout = []\n"
          "ts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n"
          "[t.start() for t in ts]\n[t.join() for t in ts]\nprint(sorted(out))\n");
  EXPECT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  EXPECT_EQ(r.stdout_text, "[0, 1, 2, 3]\n");
}

// With max_processes > 1 the program may fork; whatever it leaves behind is
// killed when the main process exits.
TEST_F(SandboxTest, ChildrenLeftBehindAreKilledWhenTheMainProcessExits) {
  const auto start = std::chrono::steady_clock::now();
  SandboxResult r =
      Run("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(60)\n"
          "        os._exit(0)\nprint('parent done')\n",
          {.wall_seconds = 10, .max_processes = 16});
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  EXPECT_EQ(r.stdout_text, "parent done\n");
  EXPECT_LT(elapsed, 3.0);
  EXPECT_EQ(LiveProcessesInGroup(r.pid), 0);
}

TEST_F(SandboxTest, ProcessTreeIsKilledAtTheWallClockLimit) {
  SandboxResult r = Run("import os, time\nfor _ in range(3):\n    os.fork()\ntime.sleep(60)\n",
                        {.wall_seconds = 1, .max_processes = 16});
  EXPECT_EQ(r.outcome, SandboxOutcome::kTimedOut) << Describe(r);
  EXPECT_EQ(LiveProcessesInGroup(r.pid), 0);
}

// A listener on loopback, non-blocking, for checking that nobody connected.
class Listener {
 public:
  Listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    ok_ = fd_ >= 0 && ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
          ::listen(fd_, 8) == 0 &&
          ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
    port_ = ntohs(addr.sin_port);
  }
  ~Listener() {
    if (fd_ >= 0) ::close(fd_);
  }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  bool ok() const { return ok_; }
  int port() const { return port_; }
  // Whether a connection is waiting (the run is over, so any would be queued).
  bool Accepted() const {
    int conn = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) return false;
    ::close(conn);
    return true;
  }

 private:
  int fd_ = -1;
  int port_ = 0;
  bool ok_ = false;
};

std::string ConnectProgram(int port) {
  return absl::StrCat("import socket\ns = socket.create_connection(('127.0.0.1', ", port,
                      "), timeout=2)\nprint('connected')\n");
}

TEST_F(SandboxTest, ConnectionToLoopbackIsRefused) {
  Listener listener;
  ASSERT_TRUE(listener.ok()) << std::strerror(errno);
  SandboxResult r = Run(ConnectProgram(listener.port()));
  EXPECT_EQ(r.outcome, SandboxOutcome::kFailed) << Describe(r);
  EXPECT_NE(r.stderr_text.find("PermissionError"), std::string::npos) << Describe(r);
  EXPECT_EQ(r.stdout_text, "");
  EXPECT_FALSE(listener.Accepted());
}

// The check above can fail: with the network allowed, the same program
// reaches the same listener.
TEST_F(SandboxTest, ConnectionSucceedsWhenNetworkIsAllowed) {
  Listener listener;
  ASSERT_TRUE(listener.ok()) << std::strerror(errno);
  SandboxResult r = Run(ConnectProgram(listener.port()), {.network = true});
  EXPECT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  EXPECT_TRUE(listener.Accepted());
}

TEST_F(SandboxTest, Ipv6SocketFailsButUnixSocketsWork) {
  SandboxResult r =
      Run("import socket\na, b = socket.socketpair()\na.sendall(b'x')\n"
          "print('unix', b.recv(1))\nsocket.socket(socket.AF_INET6)\nprint('inet6')\n");
  EXPECT_EQ(r.outcome, SandboxOutcome::kFailed) << Describe(r);
  EXPECT_EQ(r.stdout_text, "unix b'x'\n");
  EXPECT_NE(r.stderr_text.find("PermissionError: [Errno 13]"), std::string::npos) << Describe(r);
}

TEST_F(SandboxTest, NetworkNamespaceHasOnlyLoopback) {
  SandboxResult r = Run("print(open('/proc/net/dev').read())\n");
  ASSERT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  if (!r.network_namespace) GTEST_SKIP() << "no network namespace here: " << r.detail;
  std::vector<std::string> interfaces;
  for (absl::string_view line : absl::StrSplit(r.stdout_text, '\n', absl::SkipWhitespace())) {
    size_t colon = line.find(':');
    if (colon != absl::string_view::npos) {
      interfaces.emplace_back(absl::StripAsciiWhitespace(line.substr(0, colon)));
    }
  }
  EXPECT_EQ(interfaces, std::vector<std::string>{"lo"}) << Describe(r);
}

// A few of the kernel interfaces the filter refuses, reached through ctypes
// as hostile code would: kill(-1) (EPERM), netlink sockets (EACCES),
// unshare(CLONE_NEWUSER | CLONE_NEWNET) (EPERM), io_uring_setup (ENOSYS; 425 on x86_64 and
// aarch64).
TEST_F(SandboxTest, RefusedKernelInterfacesFailWithTheirErrno) {
  SandboxResult r =
      Run("import ctypes, os, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          "def errno_of(f, *args):\n    try:\n        f(*args)\n        return 0\n"
          "    except OSError as e:\n        return e.errno\n"
          "print(errno_of(os.kill, -1, 0))\n"
          "print(errno_of(socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, 0))\n"
          "print(libc.unshare(0x50000000), ctypes.get_errno())\n"
          "print(libc.syscall(425, 1, None), ctypes.get_errno())\n");
  EXPECT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  EXPECT_EQ(r.stdout_text, absl::StrCat(EPERM, "\n", EACCES, "\n-1 ", EPERM, "\n-1 ", ENOSYS, "\n"))
      << Describe(r);
}

TEST_F(SandboxTest, FileLargerThanTheLimitCannotBeWritten) {
  SandboxResult r =
      Run("with open('small', 'wb') as f:\n    f.write(b'x' * (512 << 10))\nprint('small ok')\n"
          "with open('big', 'wb') as f:\n    f.write(b'x' * (2 << 20))\nprint('big ok')\n",
          {.file_bytes = int64_t{1} << 20});
  EXPECT_EQ(r.outcome, SandboxOutcome::kFailed) << Describe(r);
  EXPECT_EQ(r.stdout_text, "small ok\n");
  EXPECT_NE(r.stderr_text.find("File too large"), std::string::npos) << Describe(r);
}

TEST_F(SandboxTest, TemporaryDirectoryIsRemovedAfterwards) {
  // Directories made inaccessible, and deeper than PATH_MAX through chdir.
  SandboxResult r =
      Run("import os\nhome = os.getcwd()\nprint(home)\nprint(os.environ['HOME'] == home)\n"
          "os.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\n"
          "os.chmod('a', 0)\nos.symlink('/etc', 'etc')\n"
          "for _ in range(300):\n    os.mkdir('d' * 20)\n    os.chdir('d' * 20)\n"
          "open('deep', 'w').write('x')\n");
  ASSERT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  std::vector<std::string> lines = absl::StrSplit(r.stdout_text, '\n');
  ASSERT_GE(lines.size(), 2u);
  EXPECT_NE(lines[0].find("/llamapro-sandbox-"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[1], "True");
  EXPECT_FALSE(std::filesystem::exists(lines[0])) << lines[0] << " " << r.detail;
  EXPECT_TRUE(std::filesystem::exists("/etc/passwd"));
}

TEST_F(SandboxTest, EnvironmentIsEmptyAndOnlyStdioIsOpen) {
  // A descriptor the child would inherit if the sandbox did not close it (no
  // O_CLOEXEC, and above the numbers the sandbox reuses).
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(devnull, 0);
  int leaked = ::fcntl(devnull, F_DUPFD, 50);
  ::close(devnull);
  ASSERT_GE(leaked, 50);
  SandboxResult r =
      Run("import os, sys\nprint(sorted(os.environ))\nprint(sorted(os.listdir('/proc/self/fd')))\n"
          "print(repr(sys.stdin.read()))\n");
  ::close(leaked);
  EXPECT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  // fd 3 is the listing's own directory descriptor.
  EXPECT_EQ(r.stdout_text, "['HOME', 'LANG', 'PATH']\n['0', '1', '2', '3']\n''\n") << Describe(r);
}

TEST_F(SandboxTest, OutputBeyondTheLimitIsDroppedAndCounted) {
  SandboxResult r = Run("import sys\nsys.stdout.write('y' * (1 << 20))\n", {.output_bytes = 1000});
  EXPECT_EQ(r.outcome, SandboxOutcome::kPassed) << Describe(r);
  EXPECT_EQ(r.stdout_text, std::string(1000, 'y'));
  EXPECT_EQ(r.stdout_dropped_bytes, (1 << 20) - 1000);
}

TEST_F(SandboxTest, RootRunsProgramAsNobodyWhoCannotReadRootFiles) {
  if (::geteuid() != 0) GTEST_SKIP() << "the uid switch happens only when running as root";
  std::string secret = "/tmp/llamapro-sandbox-secret-XXXXXX";
  int fd = ::mkstemp(secret.data());  // mode 0600, owned by root
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(::write(fd, "top secret\n", 11), 11);
  ::close(fd);
  SandboxResult r = Run(absl::StrCat("import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n",
                                     "print(open('", secret, "').read())\n"));
  ::unlink(secret.c_str());
  EXPECT_EQ(r.outcome, SandboxOutcome::kFailed) << Describe(r);
  EXPECT_EQ(r.stdout_text, "65534 65534 []\n");
  EXPECT_NE(r.stderr_text.find("PermissionError"), std::string::npos) << Describe(r);
}

TEST_F(SandboxTest, MissingInterpreterIsAnErrorNamingIt) {
  absl::StatusOr<SandboxResult> r = RunPythonSandboxed("print(1)\n", {}, "/nonexistent/python3");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->outcome, SandboxOutcome::kError) << Describe(*r);
  EXPECT_NE(r->detail.find("cannot execute /nonexistent/python3: No such file or directory"),
            std::string::npos)
      << r->detail;
}

TEST_F(SandboxTest, InvalidArgumentsAreRejected) {
  absl::StatusOr<SandboxResult> r = RunPythonSandboxed("print(1)\n", {.wall_seconds = 0});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("wall_seconds"), std::string::npos) << r.status();
  r = RunPythonSandboxed("print(1)\n", {}, "python3");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("absolute"), std::string::npos) << r.status();
}

TEST_F(SandboxTest, ConcurrentRunsAreIndependent) {
  constexpr int kRuns = 4;
  std::vector<SandboxResult> results(kRuns);
  std::vector<std::thread> threads;
  threads.reserve(kRuns);
  for (int i = 0; i < kRuns; ++i) {
    threads.emplace_back([i, &results] { results[i] = Run(absl::StrCat("print(", i, " * 7)\n")); });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kRuns; ++i) {
    EXPECT_EQ(results[i].outcome, SandboxOutcome::kPassed) << Describe(results[i]);
    EXPECT_EQ(results[i].stdout_text, absl::StrCat(i * 7, "\n"));
  }
}

TEST(SandboxOutcomeNameTest, NamesEveryOutcome) {
  EXPECT_EQ(SandboxOutcomeName(SandboxOutcome::kPassed), "passed");
  EXPECT_EQ(SandboxOutcomeName(SandboxOutcome::kFailed), "failed");
  EXPECT_EQ(SandboxOutcomeName(SandboxOutcome::kTimedOut), "timed_out");
  EXPECT_EQ(SandboxOutcomeName(SandboxOutcome::kMemoryExceeded), "memory_exceeded");
  EXPECT_EQ(SandboxOutcomeName(SandboxOutcome::kKilled), "killed");
  EXPECT_EQ(SandboxOutcomeName(SandboxOutcome::kError), "error");
}

}  // namespace
}  // namespace llamapro
