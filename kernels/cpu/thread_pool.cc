#include "kernels/cpu/thread_pool.h"

#include <algorithm>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace latentserve::kernels::cpu {
namespace {

inline void Pause() {
#if defined(__SSE2__)
  _mm_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int64_t wanted = std::min<int64_t>(size() * kPartsPerThread, max_parts);
  const int64_t chunk = (n + wanted - 1) / wanted;
  const int64_t parts = (n + chunk - 1) / chunk;
  if (parts <= 1 || workers_.empty()) {
    fn(0, n);
    return;
  }
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    job_n_ = n;
    job_chunk_ = chunk;
    job_parts_ = parts;
    next_part_ = 0;
    done_parts_ = 0;
    generation = ++generation_;
  }
  work_cv_.notify_all();
  RunParts(generation, fn);
  for (int i = 0; i < kSpinPolls && done_parts_.load(std::memory_order_acquire) != parts; ++i) Pause();
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return done_parts_ == job_parts_; });
  job_ = nullptr;
}

void ThreadPool::RunParts(uint64_t generation, const std::function<void(int64_t, int64_t)>& fn) {
  for (;;) {
    int64_t begin, end;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // A worker that wakes after its job finished (or a newer one began) claims nothing of it.
      if (generation_ != generation || next_part_ >= job_parts_) return;
      begin = next_part_++ * job_chunk_;
      end = std::min(job_n_, begin + job_chunk_);
    }
    fn(begin, end);
    std::lock_guard<std::mutex> lock(mu_);
    if (++done_parts_ == job_parts_) done_cv_.notify_one();
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    for (int i = 0; i < kSpinPolls && generation_.load(std::memory_order_acquire) == seen; ++i) Pause();
    const std::function<void(int64_t, int64_t)>* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    if (job != nullptr) RunParts(seen, *job);
  }
}

}  // namespace latentserve::kernels::cpu
