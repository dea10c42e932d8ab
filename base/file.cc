#include "base/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace llamapro {
namespace fs = std::filesystem;

absl::Status ErrnoStatus(absl::string_view what, absl::string_view path, int err) {
  std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  LP_ASSIGN_OR_RETURN(File file, File::OpenForRead(path));
  LP_ASSIGN_OR_RETURN(uint64_t size, file.Size());
  std::string contents(size, '\0');
  LP_RETURN_IF_ERROR(file.PRead(contents.data(), size, 0));
  return contents;
}

namespace {
std::atomic<uint64_t> temp_counter{0};

std::string UniqueSuffix() { return absl::StrCat(getpid(), "-", temp_counter.fetch_add(1)); }

absl::Status SyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open directory", dir, errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL) return ErrnoStatus("cannot fsync directory", dir, err);
  return absl::OkStatus();
}

std::string ParentOf(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}
}  // namespace

absl::Status WriteFileAtomic(const std::string& path, absl::string_view contents) {
  fs::path p(path);
  std::string tmp =
      JoinPath(ParentOf(path), absl::StrCat(".", p.filename().string(), ".tmp-", UniqueSuffix()));
  {
    LP_ASSIGN_OR_RETURN(File file, File::CreateNew(tmp));
    absl::Status st = file.Write(contents);
    if (st.ok()) st = file.Sync();
    if (st.ok()) st = file.Close();
    if (!st.ok()) {
      ::unlink(tmp.c_str());
      return st;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus("cannot rename into place", path, err);
  }
  return SyncDirectory(ParentOf(path));
}

// --- File ----------------------------------------------------------------------

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

File::File(File&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) {
  other.fd_ = -1;
}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    path_ = std::move(other.path_);
    other.fd_ = -1;
  }
  return *this;
}

absl::StatusOr<File> File::OpenForRead(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path, errno);
  struct stat st;
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, expected a file"));
  }
  return File(fd, path);
}

absl::StatusOr<File> File::CreateNew(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create", path, errno);
  return File(fd, path);
}

absl::StatusOr<uint64_t> File::Size() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return ErrnoStatus("cannot stat", path_, errno);
  return static_cast<uint64_t>(st.st_size);
}

absl::Status File::PRead(void* dst, size_t n, uint64_t offset) const {
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t got = ::pread(fd_, out, n, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot read", path_, errno);
    }
    if (got == 0) {
      return absl::OutOfRangeError(
          absl::StrCat("unexpected end of file in ", path_, " at byte ", offset));
    }
    out += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

absl::Status File::Write(absl::string_view data) {
  const char* p = data.data();
  size_t n = data.size();
  while (n > 0) {
    ssize_t put = ::write(fd_, p, n);
    if (put < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot write", path_, errno);
    }
    p += put;
    n -= static_cast<size_t>(put);
  }
  return absl::OkStatus();
}

absl::Status File::WriteZeros(uint64_t n) {
  static const std::string* const kZeros = new std::string(1 << 20, '\0');
  while (n > 0) {
    uint64_t chunk = std::min<uint64_t>(n, kZeros->size());
    LP_RETURN_IF_ERROR(Write(absl::string_view(kZeros->data(), chunk)));
    n -= chunk;
  }
  return absl::OkStatus();
}

absl::Status File::AppendFrom(const File& src, uint64_t src_offset, uint64_t n) {
  loff_t in_off = static_cast<loff_t>(src_offset);
  while (n > 0) {
    ssize_t put = ::copy_file_range(src.fd_, &in_off, fd_, nullptr, n, 0);
    if (put < 0) {
      if (errno == EINTR) continue;
      // File systems (or kernels) without in-kernel copies: copy through a buffer below.
      if (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL) break;
      return ErrnoStatus(absl::StrCat("cannot copy from ", src.path_, " to"), path_, errno);
    }
    if (put == 0) {
      return absl::OutOfRangeError(
          absl::StrCat("unexpected end of file in ", src.path_, " at byte ", in_off));
    }
    n -= static_cast<uint64_t>(put);
  }
  if (n == 0) return absl::OkStatus();
  std::string buffer(std::min<uint64_t>(n, 8u << 20), '\0');
  uint64_t offset = static_cast<uint64_t>(in_off);
  while (n > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, buffer.size()));
    LP_RETURN_IF_ERROR(src.PRead(buffer.data(), chunk, offset));
    LP_RETURN_IF_ERROR(Write(absl::string_view(buffer.data(), chunk)));
    offset += chunk;
    n -= chunk;
  }
  return absl::OkStatus();
}

absl::Status File::Sync() {
  if (::fsync(fd_) != 0) return ErrnoStatus("cannot fsync", path_, errno);
  return absl::OkStatus();
}

absl::Status File::Close() {
  if (fd_ < 0) return absl::OkStatus();
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return ErrnoStatus("cannot close", path_, errno);
  return absl::OkStatus();
}

// --- MappedFile ----------------------------------------------------------------

MappedFile::~MappedFile() {
  if (data_ != nullptr && size_ > 0) {
    ::munmap(const_cast<uint8_t*>(data_), size_);
  }
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  auto mapped = std::unique_ptr<MappedFile>(new MappedFile());
  LP_ASSIGN_OR_RETURN(mapped->file_, File::OpenForRead(path));
  LP_ASSIGN_OR_RETURN(mapped->size_, mapped->file_.Size());
  mapped->path_ = path;
  if (mapped->size_ > 0) {
    void* p = ::mmap(nullptr, mapped->size_, PROT_READ, MAP_PRIVATE, mapped->file_.fd(), 0);
    if (p == MAP_FAILED) return ErrnoStatus("cannot mmap", path, errno);
    mapped->data_ = static_cast<const uint8_t*>(p);
  }
  return mapped;
}

void MappedFile::DropPages(uint64_t offset, uint64_t n) const {
  static const uint64_t kPage = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t begin = (offset + kPage - 1) / kPage * kPage;  // Whole pages inside the range.
  uint64_t end = std::min(offset + n, size_) / kPage * kPage;
  if (data_ == nullptr || end <= begin) return;
  // Advice only: failure leaves the pages resident, which is harmless.
  ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

// --- Paths ---------------------------------------------------------------------

bool PathExists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec)) && !ec;
}

bool IsDirectory(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> names;
  fs::directory_iterator it(dir, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  for (const fs::directory_entry& entry : it) {
    if (entry.is_regular_file(ec)) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status MakeDirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status RemoveAll(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", ec.message()));
  return absl::OkStatus();
}

std::string AbsolutePath(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) return fs::absolute(path).lexically_normal().string();
  std::string s = p.string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string JoinPath(absl::string_view a, absl::string_view b) {
  if (a.empty()) return std::string(b);
  if (a.back() == '/') return absl::StrCat(a, b);
  return absl::StrCat(a, "/", b);
}

// --- StagingDir ----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<StagingDir>> StagingDir::Create(const std::string& final_path) {
  std::string target = AbsolutePath(final_path);
  std::string parent = ParentOf(target);
  LP_RETURN_IF_ERROR(MakeDirs(parent));
  std::string name = fs::path(target).filename().string();
  std::string staging = JoinPath(parent, absl::StrCat(".", name, ".tmp-", UniqueSuffix()));
  if (::mkdir(staging.c_str(), 0755) != 0) {
    return ErrnoStatus("cannot create staging directory", staging, errno);
  }
  return std::unique_ptr<StagingDir>(new StagingDir(staging, target));
}

StagingDir::~StagingDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
}

absl::Status StagingDir::Commit(bool replace_existing) {
  if (committed_) return absl::FailedPreconditionError("staging directory already committed");
  std::string parent = ParentOf(final_path_);
  if (PathExists(final_path_)) {
    if (!replace_existing) {
      return absl::AlreadyExistsError(
          absl::StrCat(final_path_, " already exists (use --force to replace it)"));
    }
    // Swap atomically: the old directory moves to the staging path and is
    // removed by our destructor logic below; readers never see a gap.
    if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, final_path_.c_str(), RENAME_EXCHANGE) == 0) {
      committed_ = true;
      LP_RETURN_IF_ERROR(SyncDirectory(parent));
      return RemoveAll(path_);
    }
    if (errno != EINVAL && errno != ENOSYS) {
      return ErrnoStatus("cannot swap in", final_path_, errno);
    }
    // File system without RENAME_EXCHANGE: move the old one aside first.
    std::string aside = absl::StrCat(path_, ".old");
    if (::rename(final_path_.c_str(), aside.c_str()) != 0) {
      return ErrnoStatus("cannot move aside", final_path_, errno);
    }
    if (::rename(path_.c_str(), final_path_.c_str()) != 0) {
      int err = errno;
      ::rename(aside.c_str(), final_path_.c_str());
      return ErrnoStatus("cannot rename into place", final_path_, err);
    }
    committed_ = true;
    LP_RETURN_IF_ERROR(SyncDirectory(parent));
    return RemoveAll(aside);
  }
  if (::rename(path_.c_str(), final_path_.c_str()) != 0) {
    return ErrnoStatus("cannot rename into place", final_path_, errno);
  }
  committed_ = true;
  return SyncDirectory(parent);
}

}  // namespace llamapro
