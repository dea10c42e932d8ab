// POSIX file helpers that report failures as absl::Status naming the path.
//
// Nothing here is thread-safe for concurrent use of one object; distinct
// objects are independent.
#ifndef LLAMAPRO_BASE_FILE_H_
#define LLAMAPRO_BASE_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llamapro {

// Status for a failed system call: "<what> <path>: <strerror(errno)>".
absl::Status ErrnoStatus(absl::string_view what, absl::string_view path, int err);

// Reads a whole file.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `contents` to `path` through a temporary file in the same directory,
// fsyncs it and renames it into place, so readers see the old or the new file,
// never a partial one.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view contents);

// An owned file descriptor.
class File {
 public:
  File() = default;
  ~File();
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  static absl::StatusOr<File> OpenForRead(const std::string& path);
  // Creates a new file; fails if it exists.
  static absl::StatusOr<File> CreateNew(const std::string& path);

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

  absl::StatusOr<uint64_t> Size() const;
  // Reads exactly `n` bytes at `offset`.
  absl::Status PRead(void* dst, size_t n, uint64_t offset) const;
  // Appends exactly `data.size()` bytes at the current position.
  absl::Status Write(absl::string_view data);
  absl::Status Write(const void* data, size_t n) {
    return Write(absl::string_view(static_cast<const char*>(data), n));
  }
  // Appends `n` zero bytes.
  absl::Status WriteZeros(uint64_t n);
  // Appends `n` bytes read from `src` at `src_offset`, copied inside the kernel
  // (copy_file_range) where the file systems allow it.
  absl::Status AppendFrom(const File& src, uint64_t src_offset, uint64_t n);
  absl::Status Sync();
  absl::Status Close();

 private:
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

// A read-only memory map of a whole file. Pages are loaded on first touch;
// DropPages() releases them from this process's resident set (the page cache
// keeps them), so streaming through a file larger than RAM keeps RSS flat.
class MappedFile {
 public:
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  const File& file() const { return file_; }
  void DropPages(uint64_t offset, uint64_t n) const;

 private:
  MappedFile() = default;
  File file_;
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
// Regular files directly inside `dir` (names only, sorted).
absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir);
// Creates `dir` and its missing parents.
absl::Status MakeDirs(const std::string& dir);
// Removes `path` recursively; a missing path is not an error.
absl::Status RemoveAll(const std::string& path);
// Absolute, normalized form of `path` (symlinks resolved where they exist).
std::string AbsolutePath(const std::string& path);
std::string JoinPath(absl::string_view a, absl::string_view b);

// A directory that is built up out of sight and then renamed into place.
//
// Create() makes `<parent>/.<name>.tmp-<pid>-<n>` beside `final_path`. Commit()
// renames it to `final_path` (atomically swapping out an existing directory
// when `replace_existing`, which is then removed). If the object is destroyed
// before Commit() succeeds, the staging directory is removed: a failed run
// leaves nothing behind.
class StagingDir {
 public:
  static absl::StatusOr<std::unique_ptr<StagingDir>> Create(const std::string& final_path);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const std::string& path() const { return path_; }
  const std::string& final_path() const { return final_path_; }
  absl::Status Commit(bool replace_existing);

 private:
  StagingDir(std::string path, std::string final_path)
      : path_(std::move(path)), final_path_(std::move(final_path)) {}
  std::string path_;
  std::string final_path_;
  bool committed_ = false;
};

}  // namespace llamapro

#endif  // LLAMAPRO_BASE_FILE_H_
