// The CUDA emulator's runtime (test-only, docs/cuda_emulator.md): fibers for the threads of a block,
// the barriers and warp collectives of cuda_runtime.h, launch checks, the replay of every launch in a
// second order, a guard-page CPU allocator and the SIGSEGV trap that turns an out-of-bounds access
// into an error.
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <exception>
#include <cstdlib>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "kdemu/guarded.h"

namespace kdemu {

Thread* g_self = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;

namespace {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;

enum State { kRunnable, kAtBarrier, kAtWarp, kDone };

struct Fiber : Thread {
  ucontext_t ctx;
  State state;
  const char* file;  // where it waits
  int line;
  int value;  // barrier: the predicate in, the count out
  WarpOp op;
  unsigned mask;
  uint64_t in, out;
  int arg, width;
};

std::mutex g_mutex;  // one launch at a time: __shared__ variables are process-wide statics
std::vector<Fiber> g_fibers;
char* g_stacks = nullptr;
size_t g_stack_slots = 0;
ucontext_t g_main;
void (*g_body)(void*) = nullptr;
void* g_ctx = nullptr;
bool g_failed = false;
std::string g_error;
const char* g_kernel = "";
const char* g_site = "";
cudaError_t g_last_error = cudaSuccess;
std::string g_last_error_text;
std::vector<std::pair<void*, size_t>> g_shared;
std::mutex g_live_mutex;
std::map<char*, size_t> g_live;  // the guard allocator's live allocations: what a kernel can write
// Every launch runs twice, from the same memory, in two block and thread orders, and must write the
// same bytes: the kernels are documented deterministic, and a race shows as a difference.
// KDOPS_EMU_REPLAY=0 turns it off (read at every launch).
bool replay_on() {
  const char* v = std::getenv("KDOPS_EMU_REPLAY");
  return v == nullptr || std::string(v) != "0";
}
std::mt19937_64 g_rng(std::getenv("KDOPS_EMU_SEED") ? std::strtoull(std::getenv("KDOPS_EMU_SEED"), nullptr, 10) : 2024);

std::string where(const Fiber& f) {
  std::ostringstream s;
  s << "thread (" << f.idx.x << "," << f.idx.y << "," << f.idx.z << ")";
  return s.str();
}

std::string site(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

// Records the first error of the launch; the scheduler stops at once and raises it.
void fail(const std::string& what) {
  if (g_failed) return;
  g_failed = true;
  std::ostringstream s;
  s << "CUDA emulator: kernel " << g_kernel << " (launched at " << g_site << "), block (" << g_block_idx.x << ","
    << g_block_idx.y << "," << g_block_idx.z << ") of grid (" << g_grid_dim.x << "," << g_grid_dim.y << ","
    << g_grid_dim.z << "), blockDim (" << g_block_dim.x << "," << g_block_dim.y << "," << g_block_dim.z
    << "): " << what;
  g_error = s.str();
}

Fiber& self() { return *static_cast<Fiber*>(g_self); }

void yield() { swapcontext(&self().ctx, &g_main); }

void entry() {
  try {
    g_body(g_ctx);
  } catch (const std::exception& e) {  // must not unwind past the fiber's first frame
    fail(where(self()) + ": exception: " + e.what());
  }
  self().state = kDone;  // uc_link returns to the scheduler
}

void ensure_stacks(size_t n) {
  if (n <= g_stack_slots) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (g_stacks != nullptr) munmap(g_stacks, g_stack_slots * (kStackBytes + page));
  g_stacks = static_cast<char*>(mmap(nullptr, n * (kStackBytes + page), PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  TORCH_CHECK(g_stacks != MAP_FAILED, "CUDA emulator: cannot map fiber stacks");
  for (size_t i = 0; i < n; ++i) mprotect(g_stacks + i * (kStackBytes + page), page, PROT_NONE);  // overflow guard
  g_stack_slots = n;
}

const char* state_name(const Fiber& f) {
  switch (f.state) {
    case kDone: return "has exited";
    case kAtBarrier: return "waits at __syncthreads";
    case kAtWarp: return "waits at a warp collective";
    default: return "is running";
  }
}

// Releases the warp collectives whose lanes have all arrived; false (after fail()) when one never can.
bool release_warps(bool& released) {
  const int n = static_cast<int>(g_fibers.size());
  for (int w = 0; w * kWarp < n; ++w) {
    const int base = w * kWarp, lanes = std::min(kWarp, n - base);
    int first = -1;
    for (int l = 0; l < lanes; ++l)
      if (g_fibers[base + l].state == kAtWarp) { first = l; break; }
    if (first < 0) continue;
    const Fiber& f0 = g_fibers[base + first];
    const unsigned mask = f0.mask;
    for (int l = 0; l < lanes; ++l) {
      const Fiber& f = g_fibers[base + l];
      if (f.state == kAtWarp && (f.op != f0.op || f.mask != mask)) {
        fail("lanes " + std::to_string(first) + " and " + std::to_string(l) + " of warp " + std::to_string(w) +
             " call different warp collectives or masks (" + site(f0.file, f0.line) + " and " +
             site(f.file, f.line) + ")");
        return false;
      }
    }
    for (int b = 0; b < kWarp; ++b) {
      if (!(mask >> b & 1u)) continue;
      if (b >= lanes) {
        std::ostringstream s;
        s << "warp collective at " << site(f0.file, f0.line) << " names lane " << b << " in mask 0x" << std::hex << mask
          << std::dec << ", but warp " << w << " has only " << lanes << " threads (undefined behaviour on a GPU)";
        fail(s.str());
        return false;
      }
      const Fiber& f = g_fibers[base + b];
      if (f.state != kAtWarp) {
        std::string extra = f.state == kAtBarrier ? " at " + site(f.file, f.line) : "";
        fail("warp collective at " + site(f0.file, f0.line) + ": lane " + std::to_string(b) + " of warp " +
             std::to_string(w) + " is named in the mask but " + state_name(f) + extra);
        return false;
      }
    }
    uint64_t ballot = 0;
    for (int b = 0; b < lanes; ++b)
      if (mask >> b & 1u) ballot |= (g_fibers[base + b].in != 0 ? 1ull : 0ull) << b;
    for (int l = 0; l < lanes; ++l) {
      Fiber& f = g_fibers[base + l];
      if (f.state != kAtWarp) continue;
      const int width = f.width, seg = l & ~(width - 1), pos = l & (width - 1);
      int src = l;
      switch (f.op) {
        case kShflIdx: src = seg + (f.arg & (width - 1)); break;
        case kShflDown: src = pos + f.arg < width ? l + f.arg : l; break;
        case kShflUp: src = pos - f.arg >= 0 ? l - f.arg : l; break;
        case kShflXor: src = (l ^ f.arg) < seg + width ? (l ^ f.arg) : l; break;
        case kBallot: break;
      }
      // A source lane outside the mask gives an undefined value: garbage, like fresh shared memory.
      f.out = f.op == kBallot ? ballot : (src < lanes && (mask >> src & 1u)) ? g_fibers[base + src].in : ~0ull;
      f.state = kRunnable;
    }
    released = true;
  }
  return true;
}

// Releases the block barrier when every thread waits at the same __syncthreads.
bool release_barrier() {
  const Fiber* first = nullptr;
  int waiting = 0, count = 0;
  for (const Fiber& f : g_fibers) {
    if (f.state != kAtBarrier) continue;
    if (first == nullptr) first = &f;
    ++waiting;
    count += f.value;
    if (f.line != first->line || std::strcmp(f.file, first->file) != 0) {
      fail(where(*first) + " waits at __syncthreads " + site(first->file, first->line) + " but " + where(f) +
           " at " + site(f.file, f.line));
      return false;
    }
  }
  if (first == nullptr) {
    fail("deadlock: no thread can run");
    return false;
  }
  for (const Fiber& f : g_fibers) {
    if (f.state == kDone) {
      fail("__syncthreads at " + site(first->file, first->line) + " is reached by " + std::to_string(waiting) + " of " +
           std::to_string(g_fibers.size()) + " threads: " + where(f) + " has exited without reaching it "
           "(a barrier every thread must reach; a GPU may hang or go wrong)");
      return false;
    }
  }
  for (Fiber& f : g_fibers) {
    f.value = count;
    f.state = kRunnable;
  }
  return true;
}

void run_block() {
  for (auto& [p, bytes] : g_shared) std::memset(p, 0xff, bytes);  // fresh shared memory is garbage
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const unsigned bx = g_block_dim.x, by = g_block_dim.y;
  std::vector<int> order(g_fibers.size());
  for (size_t i = 0; i < g_fibers.size(); ++i) {
    Fiber& f = g_fibers[i];
    const unsigned t = static_cast<unsigned>(i);
    f.idx = {t % bx, t / bx % by, t / (bx * by)};
    f.state = kRunnable;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g_stacks + i * (kStackBytes + page) + page;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &g_main;
    makecontext(&f.ctx, entry, 0);
    order[i] = static_cast<int>(i);
  }
  for (;;) {
    std::shuffle(order.begin(), order.end(), g_rng);  // no thread order to rely on between barriers
    bool all_done = true;
    for (int i : order) {
      Fiber& f = g_fibers[i];
      if (f.state != kRunnable) {
        all_done = all_done && f.state == kDone;
        continue;
      }
      g_self = &f;
      swapcontext(&g_main, &f.ctx);
      if (g_failed) return;
      all_done = all_done && f.state == kDone;
    }
    if (all_done) return;
    bool released = false;
    if (!release_warps(released)) return;
    if (!released && !release_barrier()) return;
  }
}

// SIGSEGV/SIGBUS while a kernel or a memset runs: back to the launcher, which raises an error.
sigjmp_buf g_fault_jmp;
void* g_fault_addr = nullptr;
struct sigaction g_old_segv, g_old_bus;

void on_fault(int, siginfo_t* info, void*) {
  g_fault_addr = info->si_addr;
  siglongjmp(g_fault_jmp, 1);
}

struct FaultTrap {
  stack_t old_stack{};
  std::vector<char> alt = std::vector<char>(1 << 16);  // the handler runs here if a fiber's stack overflowed
  FaultTrap() {
    stack_t ss{};
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    sigaltstack(&ss, &old_stack);
    struct sigaction sa {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
  }
  ~FaultTrap() {
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    sigaction(SIGBUS, &g_old_bus, nullptr);
    sigaltstack(&old_stack, nullptr);
  }
};

std::string pointer_text(const void* p) {
  std::ostringstream s;
  s << p;
  return s.str();
}

bool bad_config(const Config& c, std::string& why) {
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0) why = "a grid dimension is 0";
  else if (c.grid.x > 2147483647u || c.grid.y > 65535 || c.grid.z > 65535) why = "grid too large";
  else if (threads == 0 || threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64)
    why = "invalid block size";
  else if (c.smem != 0) why = "dynamic shared memory is not emulated";
  else return false;
  return true;
}

}  // namespace

int barrier(int pred, const char* file, int line) {
  Fiber& f = self();
  f.state = kAtBarrier;
  f.file = file;
  f.line = line;
  f.value = pred;
  yield();
  return f.value;
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  Fiber& f = self();
  const unsigned linear = f.idx.x + f.idx.y * g_block_dim.x + f.idx.z * g_block_dim.x * g_block_dim.y;
  const int lane = static_cast<int>(linear % kWarp);
  if (!(mask >> lane & 1u)) {
    fail(where(f) + " calls a warp collective at " + site(file, line) + " with a mask that does not name its own lane");
    yield();
  }
  if (width < 1 || width > kWarp || (width & (width - 1)) != 0) {
    fail("warp collective at " + site(file, line) + ": width " + std::to_string(width) + " is not a power of 2 <= 32");
    yield();
  }
  f.state = kAtWarp;
  f.op = op;
  f.mask = mask;
  f.in = value;
  f.arg = arg;
  f.width = width;
  f.file = file;
  f.line = line;
  yield();
  return f.out;
}

bool shared_region(void* p, size_t bytes) {
  std::memset(p, 0xff, bytes);
  g_shared.emplace_back(p, bytes);
  return true;
}

void run(const char* kernel, const char* launch_site, const Config& cfg, void (*body)(void*), void* ctx) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::string why;
  if (bad_config(cfg, why)) {  // like a GPU: the launch does nothing and cudaGetLastError reports it
    g_last_error = cudaErrorInvalidConfiguration;
    g_last_error_text = std::string("kernel ") + kernel + " launched at " + launch_site + ": " + why + " (grid (" +
                        std::to_string(cfg.grid.x) + "," + std::to_string(cfg.grid.y) + "," +
                        std::to_string(cfg.grid.z) + "), block (" + std::to_string(cfg.block.x) + "," +
                        std::to_string(cfg.block.y) + "," + std::to_string(cfg.block.z) + "))";
    return;
  }
  const size_t threads = size_t(cfg.block.x) * cfg.block.y * cfg.block.z;
  const uint64_t blocks = uint64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  TORCH_CHECK(blocks <= (1u << 22), "CUDA emulator: kernel ", kernel, " launched with ", blocks,
              " blocks; the emulator runs small test shapes only");
  ensure_stacks(threads);
  g_fibers.assign(threads, Fiber{});
  g_kernel = kernel;
  g_site = launch_site;
  g_grid_dim = cfg.grid;
  g_block_dim = cfg.block;
  g_body = body;
  g_ctx = ctx;
  g_failed = false;
  g_error.clear();
  std::vector<uint64_t> order(blocks);
  for (uint64_t b = 0; b < blocks; ++b) order[b] = b;
  const bool replay = replay_on();
  std::lock_guard<std::mutex> live_lock(g_live_mutex);
  std::vector<std::string> before, first;
  auto snapshot = [](std::vector<std::string>& out) {
    out.clear();
    for (auto& [p, n] : g_live) out.emplace_back(p, n);
  };
  if (replay) snapshot(before);
  FaultTrap trap;
  if (sigsetjmp(g_fault_jmp, 1) != 0) {
    const Fiber* f = static_cast<const Fiber*>(g_self);
    fail((f != nullptr ? where(*f) + ": " : std::string()) + "illegal memory access at address " +
         pointer_text(g_fault_addr) + " (outside every allocation of the call, or a fiber stack overflow)");
  } else {
    for (int pass = 0; pass < (replay ? 2 : 1) && !g_failed; ++pass) {
      if (pass == 1) {  // back to the memory the first pass started from
        snapshot(first);
        size_t k = 0;
        for (auto& [p, n] : g_live) std::memcpy(p, before[k++].data(), n);
      }
      std::shuffle(order.begin(), order.end(), g_rng);  // no block order to rely on
      for (uint64_t b : order) {
        g_block_idx = {static_cast<unsigned>(b % cfg.grid.x), static_cast<unsigned>(b / cfg.grid.x % cfg.grid.y),
                       static_cast<unsigned>(b / (uint64_t(cfg.grid.x) * cfg.grid.y))};
        run_block();
        if (g_failed) break;
      }
    }
    size_t k = 0;
    for (auto& [p, n] : g_live) {
      if (g_failed || !replay) break;
      const std::string& a = first[k++];
      const size_t at = std::mismatch(a.begin(), a.end(), p).first - a.begin();
      if (at < n) {
        g_block_idx = {0, 0, 0};
        fail("the kernel wrote different bytes in two runs with different block and thread orders (byte " +
             std::to_string(at) + " of the " + std::to_string(n) + "-byte allocation at " + pointer_text(p) +
             "): a race, or a result that depends on the order blocks or threads run in");
      }
    }
  }
  g_self = nullptr;
  TORCH_CHECK(!g_failed, g_error);
}

void protected_memset(void* p, int value, size_t count) {
  std::lock_guard<std::mutex> lock(g_mutex);
  FaultTrap trap;
  g_self = nullptr;
  if (sigsetjmp(g_fault_jmp, 1) != 0)
    TORCH_CHECK(false, "CUDA emulator: cudaMemsetAsync of ", count, " bytes at ", p,
                " runs outside its allocation (fault at ", g_fault_addr, ")");
  std::memset(p, value, count);
}

// ---- the guard-page allocator and the wrapper of each registered kernel (guarded.h) ----

namespace {

struct Mapping {
  void* base;
  size_t bytes;
  char* data;
};

void unmap(void* ctx) {
  auto* m = static_cast<Mapping*>(ctx);
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    g_live.erase(m->data);
  }
  munmap(m->base, m->bytes);
  delete m;
}

// Each allocation ends exactly at a PROT_NONE page (and starts a page after another one), and starts
// out as 0xff bytes (NaN): reading past the end or an uninitialised output does not go unnoticed.
struct GuardAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t data_pages = (n + page - 1) / page;
    const size_t bytes = (data_pages + 2) * page;
    char* base = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    TORCH_CHECK(base != MAP_FAILED, "CUDA emulator: guard allocation of ", n, " bytes failed");
    mprotect(base, page, PROT_NONE);
    mprotect(base + (data_pages + 1) * page, page, PROT_NONE);
    char* data = base + (data_pages + 1) * page - n;
    std::memset(data, 0xff, n);
    {
      std::lock_guard<std::mutex> lock(g_live_mutex);
      g_live[data] = n;
    }
    return {data, new Mapping{base, bytes, data}, &unmap, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
};

GuardAllocator g_guard_allocator;
std::mutex g_scope_mutex;
int g_scope_depth = 0;
c10::Allocator* g_saved_allocator = nullptr;
constexpr uint8_t kPriority = 255;  // SetCPUAllocator ignores a lower priority than the current one

}  // namespace

GuardScope::GuardScope() {
  std::lock_guard<std::mutex> lock(g_scope_mutex);
  if (g_scope_depth++ == 0) {
    g_saved_allocator = c10::GetCPUAllocator();
    c10::SetCPUAllocator(&g_guard_allocator, kPriority);
    g_last_error = cudaSuccess;
  }
}

GuardScope::~GuardScope() {
  std::lock_guard<std::mutex> lock(g_scope_mutex);
  if (--g_scope_depth == 0) c10::SetCPUAllocator(g_saved_allocator, kPriority);
}

void GuardScope::finish() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  TORCH_CHECK(e == cudaSuccess, "CUDA emulator: a launch failed and nothing called cudaGetLastError (",
              g_last_error_text, ")");
}

at::Tensor guard_copy(const at::Tensor& t) {
  if (!t.defined()) return t;
  // The region the view can reach, copied into one guarded allocation and viewed with the same
  // strides: the kernel sees the caller's layout, and the allocation ends at its last element.
  int64_t extent = t.numel() == 0 ? 0 : 1;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.numel() != 0) extent += (t.size(d) - 1) * t.stride(d);
  at::Tensor flat = at::empty({extent}, t.options());
  if (extent > 0) flat.copy_(t.as_strided({extent}, {1}));
  return flat.as_strided(t.sizes(), t.strides());
}

c10::optional<at::Tensor> guard_copy(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return guard_copy(*t);
}

}  // namespace kdemu

cudaError_t cudaGetLastError() {
  const cudaError_t e = kdemu::g_last_error;
  kdemu::g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return kdemu::g_last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return kdemu::g_last_error_text.empty() ? "invalid configuration argument"
                                                                                 : kdemu::g_last_error_text.c_str();
    default: return "invalid argument";
  }
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  kdemu::protected_memset(ptr, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, int, cudaStream_t) {
  std::memmove(dst, src, count);
  return cudaSuccess;
}
