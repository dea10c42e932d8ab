// A fixed set of worker threads that run one indexed task per thread and
// wait for all of them: fork/join parallelism for the training step, with
// the work split decided by the caller (so results do not depend on timing).
#ifndef LLAMAPRO_BASE_PARALLEL_H_
#define LLAMAPRO_BASE_PARALLEL_H_

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace llamapro {

// Thread-compatible: one Run at a time. The caller's thread runs task 0.
class ForkJoinPool {
 public:
  // `threads` >= 1 (1: everything runs on the caller's thread).
  explicit ForkJoinPool(int threads);
  ~ForkJoinPool();
  ForkJoinPool(const ForkJoinPool&) = delete;
  ForkJoinPool& operator=(const ForkJoinPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  // Runs task(i) for i in [0, threads()) concurrently and returns when all
  // have finished. `task` must not throw.
  void Run(const std::function<void(int)>& task);

 private:
  void Work(int index);
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable start_, done_;
  const std::function<void(int)>* task_ = nullptr;
  long generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

// Number of hardware threads (at least 1).
int HardwareThreads();

}  // namespace llamapro

#endif  // LLAMAPRO_BASE_PARALLEL_H_
