// A process-wide pool for the decoding kernels: the calling thread plus (CPUs - 1) workers that
// spin briefly between calls, then sleep. Why not OpenMP: XLA:CPU calls a custom call from
// whichever of its own threads runs the thunk, and libgomp keeps a separate team per calling
// thread, so two XLA threads meant two teams of workers contending for the same cores.
#pragma once
#include <immintrin.h>
#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <cstdint>
#include <mutex>
#include <thread>

namespace janusflow_pool {

class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // never destroyed: workers outlive static destruction
    return *pool;
  }
  int size() const { return n_; }

  // f(t, n) for t in [0, n) on n threads (the caller is t = 0); calls from several threads
  // take turns.
  template <typename F>
  void Run(int n, F&& f) {
    if (n > n_) n = n_;
    if (n <= 1) return f(0, 1);
    std::lock_guard<std::mutex> turn(call_mu_);
    used_ = n;
    job_ = [&f, n](int t) { f(t, n); };
    done_.store(0, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    f(0, n);
    while (done_.load(std::memory_order_acquire) < n_ - 1) _mm_pause();
  }

 private:
  Pool() {
    cpu_set_t set;
    n_ = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    if (n_ < 1) n_ = 1;
    for (int t = 1; t < n_; ++t) std::thread([this, t] { Work(t); }).detach();
  }

  void Work(int t) {
    uint64_t seen = 0;  // gen_ before any Run: a worker that starts late still sees the first one
    for (;;) {
      for (int spin = 0; spin < kSpin && gen_.load(std::memory_order_acquire) == seen; ++spin) _mm_pause();
      if (gen_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return gen_.load(std::memory_order_acquire) != seen; });
      }
      seen = gen_.load(std::memory_order_acquire);
      if (t < used_) job_(t);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  // pause loops before a worker sleeps: outlasts the gaps between a step's calls (2^10 timed the same)
  static constexpr int kSpin = 1 << 14;
  int n_ = 1, used_ = 1;
  std::function<void(int)> job_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> done_{0};
  std::mutex mu_, call_mu_;
  std::condition_variable cv_;
};

}  // namespace janusflow_pool
