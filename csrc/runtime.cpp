// CPU feature detection, path dispatch and the std::thread pool.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine.h"

#if defined(_WIN32)
#include <process.h>
#define ONEBIT_GETPID _getpid
#else
#include <unistd.h>
#define ONEBIT_GETPID getpid
#endif
#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#include <cstring>
#define ONEBIT_SHARED_OPENMP 1
#else
#define ONEBIT_SHARED_OPENMP 0
#endif

namespace onebit {

// ---- features and paths -----------------------------------------------------------------------

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures r;
#if ONEBIT_X86
    __builtin_cpu_init();
    r.popcnt = __builtin_cpu_supports("popcnt");
    r.avx2 = __builtin_cpu_supports("avx2") && r.popcnt;
    r.fma = __builtin_cpu_supports("fma");
    r.avx512_vpopcntdq = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vpopcntdq") && r.popcnt;
#endif
    return r;
  }();
  return f;
}

bool path_available(Path p) {
  switch (p) {
    case Path::Portable: return true;
    case Path::AVX2: return cpu_features().avx2;
    case Path::AVX512: return cpu_features().avx512_vpopcntdq;
  }
  return false;
}

Path best_path() {
  if (path_available(Path::AVX512)) return Path::AVX512;
  if (path_available(Path::AVX2)) return Path::AVX2;
  return Path::Portable;
}

const char* path_name(Path p) {
  switch (p) {
    case Path::Portable: return "portable";
    case Path::AVX2: return "avx2";
    case Path::AVX512: return "avx512";
  }
  return "?";
}

Path parse_path(const std::string& name) {
  Path p;
  if (name == "auto") return best_path();
  if (name == "portable") p = Path::Portable;
  else if (name == "avx2") p = Path::AVX2;
  else if (name == "avx512") p = Path::AVX512;
  else throw std::invalid_argument("unknown engine path '" + name + "'; allowed: auto, avx512, avx2, portable");
  if (!path_available(p)) {
    std::string avail = "portable";
    if (path_available(Path::AVX2)) avail += ", avx2";
    if (path_available(Path::AVX512)) avail += ", avx512";
    throw std::invalid_argument(std::string("engine path '") + name + "' is not supported by this CPU; available: " +
                                avail);
  }
  return p;
}

BlockFn block_fn(Path p) {
#if ONEBIT_X86
  switch (p) {
    case Path::AVX512: return popcount_block_avx512;
    case Path::AVX2: return popcount_block_avx2;
    case Path::Portable: return cpu_features().popcnt ? popcount_block_popcnt : popcount_block_portable;
  }
#else
  (void)p;
#endif
  return popcount_block_portable;
}

PanelKernel panel_kernel(Path p) {
#if ONEBIT_X86
  switch (p) {
    case Path::AVX512: return {popcount_panel_avx512, 8, false, popcount_taps_avx512};
    case Path::AVX2: return {popcount_panel_avx2, 4, true, popcount_taps_avx2};
    case Path::Portable:
      return {cpu_features().popcnt ? popcount_panel_popcnt : popcount_panel_portable, 4, false};
  }
#else
  (void)p;
#endif
  return {popcount_panel_portable, 4, false};
}

// ---- thread pool ------------------------------------------------------------------------------
//
// Workers poll for the next job for about kSpinUs microseconds after each one (a convolution runs
// two or three jobs back to back, and waking a sleeping thread costs 10-40 us, more in a VM), then
// block on a condition variable (they must not keep stealing cores from torch or other processes).  An exception thrown by a task is caught where it happens
// and rethrown in the caller once every task has finished.  Tasks are handed out through atomic counters
// (TaskParts: each participant's own part first, then the others'), so a worker that wakes late simply
// finds nothing left; the caller works too and waits only until every task has *finished*.  Jobs are shared_ptr-owned, so a late worker never touches a dead
// job.  After fork() the child gets a fresh pool (the parent's threads do not exist there).

namespace {

constexpr int64_t kSpinUs = 50;

// The tasks of one parallel_for, split into one contiguous part per participant (the caller is
// participant 0).  Each takes its own part first and then helps with the others', so participant i
// runs the same tasks call after call while every thread keeps up, so the cache lines its tiles
// write can stay in its core's cache (the likely reason for the gain below, not told apart from
// other effects of contiguous shares).  With one shared counter the 64 -> 64 @ 56x56 conv at 2 threads
// took 0.155 ms, split this way 0.106 ms (Python, back-to-back medians on torch's OpenMP team,
// results/conv_microbench_xeon_run3.json and _run4.json, Intel Xeon VM).  A late thread finds its
// part done by the others.  Each counter has a cache line of its own.
class TaskParts {
 public:
  TaskParts(int64_t ntasks, int parts) : ntasks_(ntasks), parts_(std::max(1, parts)), next_(new Counter[parts_]) {
    for (int i = 0; i < parts_; ++i) next_[i].v.store(begin(i), std::memory_order_relaxed);
  }

  // runs tasks, own part first, until none is left; fn(t) for each task t taken
  template <class F>
  void drain(int part, F&& fn) {
    for (int k = 0; k < parts_; ++k) {
      const int i = (part % parts_ + k) % parts_;
      const int64_t end = begin(i + 1);
      for (int64_t t; (t = next_[i].v.fetch_add(1, std::memory_order_relaxed)) < end;) fn(t);
    }
  }

 private:
  struct alignas(64) Counter {
    std::atomic<int64_t> v;
  };
  // ntasks * i / parts without overflow
  int64_t begin(int i) const { return ntasks_ / parts_ * i + ntasks_ % parts_ * i / parts_; }

  int64_t ntasks_;
  int parts_;
  std::unique_ptr<Counter[]> next_;
};

inline void cpu_relax() {
#if ONEBIT_X86
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

struct Job {
  Job(const std::function<void(int64_t)>* fn, int64_t ntasks, int nworkers)
      : fn(fn), ntasks(ntasks), nworkers(nworkers), parts(ntasks, nworkers + 1) {}
  const std::function<void(int64_t)>* fn;
  int64_t ntasks;
  int nworkers;  // workers (besides the caller) allowed to take part
  TaskParts parts;
  std::atomic<int64_t> done{0};
  std::mutex error_mu;
  std::exception_ptr error;  // the first exception a task threw, rethrown in the caller
};

class ThreadPool {
 public:
  void run(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock() || nthreads <= 1 || ntasks <= 1) {  // nested / concurrent / serial
      for (int64_t t = 0; t < ntasks; ++t) fn(t);
      return;
    }
    const int nworkers = static_cast<int>(std::min<int64_t>(nthreads, ntasks)) - 1;
    auto job = std::make_shared<Job>(&fn, ntasks, nworkers);
    {
      std::lock_guard<std::mutex> lk(mu_);
      while (static_cast<int>(threads_) < nworkers) {
        std::thread(&ThreadPool::worker, this, static_cast<int>(threads_)).detach();
        ++threads_;
      }
      job_ = job;
      ++generation_;
      posted_.store(generation_, std::memory_order_release);
    }
    cv_.notify_all();
    work(*job, 0);
    // wait for tasks taken by workers to finish: spin briefly, then sleep
    for (int spin = 0; job->done.load(std::memory_order_acquire) < ntasks; ++spin) {
      if (spin < 2000) {
        std::this_thread::yield();
      } else {
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait_for(lk, std::chrono::microseconds(200),
                          [&] { return job->done.load(std::memory_order_acquire) >= ntasks; });
      }
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (job_ == job) job_.reset();
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void work(Job& job, int part) {
    job.parts.drain(part, [&](int64_t t) {
      try {
        (*job.fn)(t);
      } catch (...) {  // never let an exception escape a worker thread (std::terminate)
        std::lock_guard<std::mutex> lk(job.error_mu);
        if (!job.error) job.error = std::current_exception();
      }
      if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.ntasks) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_all();
      }
    });
  }

  void worker(int id) {
    uint64_t seen = 0;
    {
      std::lock_guard<std::mutex> lk(mu_);
      seen = generation_ - (job_ ? 1 : 0);  // a job posted just before this thread started
    }
    for (;;) {
      std::shared_ptr<Job> job;
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinUs);
      while (posted_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) {
        for (int i = 0; i < 64; ++i) cpu_relax();
      }
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_;
      }
      if (job && id < job->nworkers) work(*job, id + 1);
    }
  }

  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> posted_{0};  // generation_, readable without the lock (the spin above)
  size_t threads_ = 0;
};

ThreadPool& pool() {
  // Leaked on purpose: detached workers may still wait on its condition variable at exit.
  static std::mutex mu;
  static ThreadPool* p = nullptr;
  static long pid = -1;
  std::lock_guard<std::mutex> lk(mu);
  const long now = static_cast<long>(ONEBIT_GETPID());
  if (p == nullptr || pid != now) {  // first use, or the child of a fork
    p = new ThreadPool();
    pid = now;
  }
  return *p;
}

}  // namespace

// ---- the OpenMP runtime already in the process -------------------------------------------------
//
// PyTorch runs its own parallel regions on an OpenMP team whose idle threads spin for a while after
// each region.  A second pool of ours would then fight those spinning threads for the same cores
// (measured: the engine at 2 threads slower than at 1 right after a torch op).  So when an OpenMP
// runtime is already loaded (torch's libgomp, or an Intel / LLVM one with the GOMP interface), the
// engine's tasks run on that runtime's team through its stable C entry point GOMP_parallel: torch's
// waiting threads take them at once.  The library is found among the loaded objects and opened with
// RTLD_NOLOAD, so nothing is linked or loaded for it; without one (or after fork(), or when
// ONEBIT_ENGINE_THREADS=pool) the std::thread pool above runs the tasks.

namespace {

struct SharedOpenMP {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*in_parallel)() = nullptr;                                          // omp_in_parallel
  int (*thread_num)() = nullptr;                                           // omp_get_thread_num
  std::string library;
};

#if ONEBIT_SHARED_OPENMP
int find_openmp(struct dl_phdr_info* info, size_t, void* data) {
  auto* found = static_cast<std::vector<std::string>*>(data);
  const char* name = info->dlpi_name;
  if (!name || !*name) return 0;
  const char* base = std::strrchr(name, '/');
  base = base ? base + 1 : name;
  if (std::strncmp(base, "libgomp", 7) == 0 || std::strncmp(base, "libiomp5", 8) == 0 ||
      std::strncmp(base, "libomp.", 7) == 0 || std::strncmp(base, "libomp-", 7) == 0)
    found->push_back(name);
  return 0;
}
#endif

SharedOpenMP lookup_openmp() {
  SharedOpenMP r;
#if ONEBIT_SHARED_OPENMP
  std::vector<std::string> libs;
  dl_iterate_phdr(find_openmp, &libs);
  std::stable_sort(libs.begin(), libs.end(), [](const std::string& a, const std::string& b) {
    return (a.find("libgomp") != std::string::npos) > (b.find("libgomp") != std::string::npos);  // GNU first
  });
  for (const auto& lib : libs) {
    void* h = dlopen(lib.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    if (!h) continue;
    auto par = reinterpret_cast<decltype(r.parallel)>(dlsym(h, "GOMP_parallel"));
    auto inpar = reinterpret_cast<decltype(r.in_parallel)>(dlsym(h, "omp_in_parallel"));
    auto tnum = reinterpret_cast<decltype(r.thread_num)>(dlsym(h, "omp_get_thread_num"));
    if (par && inpar) {
      r.parallel = par;
      r.in_parallel = inpar;
      r.thread_num = tnum;
      r.library = lib;
      return r;  // the handle stays open: the runtime must outlive every call
    }
    dlclose(h);
  }
#endif
  return r;
}

struct Backend {
  std::mutex mu;
  bool use_pool = false;  // forced by set_thread_backend("pool") or ONEBIT_ENGINE_THREADS=pool
  bool looked = false;
  long pid = -1;
  SharedOpenMP omp;
};

Backend& backend() {
  static Backend* b = [] {
    auto* r = new Backend();  // leaked: used until exit
    const char* env = std::getenv("ONEBIT_ENGINE_THREADS");
    r->use_pool = env && std::string(env) == "pool";
    return r;
  }();
  return *b;
}

// the runtime to use now, or null for the std::thread pool
const SharedOpenMP* shared_openmp() {
  Backend& b = backend();
  std::lock_guard<std::mutex> lk(b.mu);
  if (b.use_pool) return nullptr;
  const long now = static_cast<long>(ONEBIT_GETPID());
  if (!b.looked) {  // looked up at the first parallel call: torch is imported by then
    b.omp = lookup_openmp();
    b.looked = true;
    b.pid = now;
  }
  if (b.pid != now || !b.omp.parallel) return nullptr;  // a fork()ed child: its OpenMP team is gone
  return &b.omp;
}

struct OmpJob {
  OmpJob(const std::function<void(int64_t)>* fn, int64_t ntasks, int nthreads, int (*thread_num)())
      : fn(fn), thread_num(thread_num), parts(ntasks, nthreads) {}
  const std::function<void(int64_t)>* fn;
  int (*thread_num)();      // omp_get_thread_num; without it, parts go by order of arrival
  std::atomic<int> arrived{0};
  TaskParts parts;  // one per requested thread; a smaller team drains the parts of the missing ones
  std::mutex error_mu;
  std::exception_ptr error;
};

void omp_body(void* data) {
  auto& job = *static_cast<OmpJob*>(data);
  const int part = job.thread_num ? job.thread_num() : job.arrived.fetch_add(1, std::memory_order_relaxed);
  job.parts.drain(part, [&](int64_t t) {
    try {
      (*job.fn)(t);
    } catch (...) {  // an exception must not leave an OpenMP thread
      std::lock_guard<std::mutex> lk(job.error_mu);
      if (!job.error) job.error = std::current_exception();
    }
  });
}

}  // namespace

std::string thread_backend() {
  const SharedOpenMP* omp = shared_openmp();
  return omp ? "openmp:" + omp->library : std::string("pool");
}

void set_thread_backend(const std::string& name) {
  if (name != "auto" && name != "pool")
    throw std::invalid_argument("unknown engine thread backend '" + name + "'; allowed: auto, pool");
  Backend& b = backend();
  std::lock_guard<std::mutex> lk(b.mu);
  b.use_pool = name == "pool";
}

void parallel_for(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn) {
  if (ntasks <= 0) return;
  if (nthreads <= 1 || ntasks == 1) {
    for (int64_t t = 0; t < ntasks; ++t) fn(t);
    return;
  }
  if (const SharedOpenMP* omp = shared_openmp()) {
    if (omp->in_parallel()) {  // called from inside a parallel region: run serially
      for (int64_t t = 0; t < ntasks; ++t) fn(t);
      return;
    }
    const int team = static_cast<int>(std::min<int64_t>(nthreads, ntasks));
    OmpJob job(&fn, ntasks, team, omp->thread_num);
    omp->parallel(omp_body, &job, static_cast<unsigned>(team), 0);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  pool().run(ntasks, nthreads, fn);
}

}  // namespace onebit
