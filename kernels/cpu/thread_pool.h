// A fixed pool of worker threads running ParallelFor loops (the CPU backend's "stream").
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace latentserve::kernels::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), using every thread (the caller
  // too), and returns when all are done. `grain` is the smallest range worth a part. The range
  // is cut into up to kPartsPerThread parts per thread, claimed by whichever thread is free: a
  // thread that wakes late or is preempted (other processes on the cores) leaves its share to
  // the others instead of stalling the call. fn must not depend on which thread runs a part.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  static constexpr int64_t kPartsPerThread = 4;
  // Before sleeping on a condition variable, a thread waiting for work (or for the last part)
  // polls this many times with a pause (~30 us): a forward's ops come back to back, and a futex
  // wake-up costs more than the wait it ends. Bounded, so a loaded machine loses little.
  static constexpr int kSpinPolls = 256;
  void WorkerLoop();
  // Runs parts of job `generation` until none is left unclaimed.
  void RunParts(uint64_t generation, const std::function<void(int64_t, int64_t)>& fn);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 0, job_parts_ = 0;
  int64_t next_part_ = 0;                 // of the current job
  std::atomic<int64_t> done_parts_{0};    // written under mu_; polled without it
  std::atomic<uint64_t> generation_{0};   // likewise
  bool stop_ = false;
};

}  // namespace latentserve::kernels::cpu
