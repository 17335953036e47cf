// emu.cpp: the CPU emulator's runtime: grid execution, barriers, warp
// exchange, memory and the API calls of cuda_runtime.h (see that header for
// what is emulated and how).
//
// The threads of a block are fibers (ucontext) on the calling thread, run
// round robin by a small scheduler: a fiber runs until it waits at a
// barrier or returns; a waiting fiber is resumed once the last member of
// its barrier (the block's, or its warp's) has arrived. Cooperative fibers
// make a barrier a context switch instead of a futex round trip per thread,
// which is what kept the first, thread-per-CUDA-thread version slow, and a
// barrier some threads never reach is reported as a deadlock instead of
// hanging.
#include "cuda_runtime.h"

#include <pthread.h>
#include <time.h>
#include <ucontext.h>

#include <memory>
#include <vector>

// AddressSanitizer's checks and stack printer, when it is linked in
// (GLIA_SANITIZE). Declared under other names: GCC knows the real ones as builtins.
extern "C" {
#define GLIA_EMU_ASAN(n)                                                                       \
    void asan_load##n(const void *) __asm__("__asan_load" #n) __attribute__((weak));           \
    void asan_store##n(const void *) __asm__("__asan_store" #n) __attribute__((weak));
GLIA_EMU_ASAN(1) GLIA_EMU_ASAN(2) GLIA_EMU_ASAN(4) GLIA_EMU_ASAN(8) GLIA_EMU_ASAN(16)
void asan_loadN(const void *, size_t) __asm__("__asan_loadN") __attribute__((weak));
void asan_storeN(const void *, size_t) __asm__("__asan_storeN") __attribute__((weak));
void __sanitizer_print_stack_trace(void) __attribute__((weak));
}

namespace {

// One CUDA thread of the block being run: a fiber with its own stack.
struct Fiber {
    ucontext_t ctx;
    unsigned char *stack;  // kStack bytes of the pool
    uint3 idx;
    int tid;
    bool done;
    struct Barrier *waiting;  // the barrier it waits at, or null
    unsigned long wait_gen;
};

// A barrier of the fibers of a block (__syncthreads) or of a warp. Its
// party count shrinks when a fiber returns from the kernel early, like an
// exited thread on a GPU.
struct Barrier {
    int expected = 0, arrived = 0;
    unsigned long gen = 0;
    uint32_t *epoch = nullptr;  // the race check's epoch this barrier advances
    void reset(int n) { expected = n, arrived = 0, gen++; }
    void release() { arrived = 0, gen++, ++*epoch; }
};

struct Grid {
    dim3 grid, block;
    int nthreads, nwarps;
    const std::function<void()> *body;
    Barrier block_bar;             // __syncthreads
    std::vector<Barrier> warps;    // __syncwarp and shuffles, one per warp
    std::vector<double> exchange;  // (nwarps, 32)
    std::vector<unsigned char> smem;
    std::vector<Fiber> fibers;     // (nthreads)
    ucontext_t sched;              // the scheduler's context
    int running;                   // the fiber being run
};

Grid *cur;  // the grid being run (one at a time: launches are synchronous)

// ---- shared-memory race check ---------------------------------------------------------
// The kernels' translation units carry -fsanitize=thread's instrumentation
// without its runtime (CMakeLists.txt): each load and store calls a
// __tsan_readN / __tsan_writeN hook, defined at the end of this file. A hook
// checks accesses to shared memory (the block's dynamic shared memory and the
// static arrays cu2cpp.pl registers) and hands every access on to
// AddressSanitizer's check when it is linked in.
//
// Order is tracked by epochs: the block epoch advances at each block's start
// and at every release of __syncthreads, a warp's epoch at every release of
// its warp barrier (__syncwarp, shuffles, votes). Accesses of two threads to
// one 4-byte word are ordered when a block epoch lies between them or, for
// two lanes of one warp, a warp epoch. Each word keeps its last write and
// its reads since (one thread, several lanes of one warp, or several warps):
// enough to see a conflict whenever one exists, as racecheck reports it.
struct Cell {
    uint32_t wbe, wwe;  // the last write's block and warp epochs (wbe 0: none)
    uint32_t rbe, rwe;  // the reads': block epoch (0: none), warp epoch of the newest
    int32_t wt, rt;     // the writer; the reader, or kLanes / kWarps
    int32_t rwarp;      // the readers' warp (rt != kWarps)
};
const int32_t kLanes = -1, kWarps = -2;  // reads by several lanes of rwarp / several warps

uint32_t block_epoch = 1, warp_epoch[32];
uintptr_t dyn_lo, dyn_len;  // the block's dynamic shared memory (len 0: no launch)
std::vector<Cell> dyn_cells;
struct Static {
    uintptr_t lo, len;
    size_t cell0;  // its first word in st_cells
    const char *name;
};
std::vector<Static> statics;  // the registered static __shared__ arrays
std::vector<Cell> st_cells;
uintptr_t st_lo = UINTPTR_MAX, st_hi;  // their bounding box

// The check runs at every load and store of the kernels: built with -O2
// (CMakeLists.txt) and without the sanitizers' own checks.
#define GLIA_EMU_HOT __attribute__((no_sanitize("address", "undefined")))

// Whether an access of thread u at epochs (be, we) is unordered with one now by thread t.
GLIA_EMU_HOT inline bool concurrent(int32_t u, uint32_t be, uint32_t we, int t) {
    return be == block_epoch && u != t && (u / 32 != t / 32 || we == warp_epoch[t / 32]);
}

[[noreturn]] void race(int t, bool write, int32_t other, bool other_wrote, const char *name, size_t byte) {
    char who[48];
    if (other >= 0) snprintf(who, sizeof who, "thread %d", other);
    else snprintf(who, sizeof who, "%s", other == kLanes ? "other lanes of its warp" : "threads of other warps");
    fprintf(stderr, "glia CUDA emulator: shared-memory race in block (%u, %u, %u): thread %d %s %s%s%s at byte "
                    "%zu, which %s %s with no barrier between them (a %s hazard, as racecheck reports it)\n",
            blockIdx.x, blockIdx.y, blockIdx.z, t, write ? "writes" : "reads", name ? "`" : "",
            name ? name : "dynamic shared memory", name ? "`" : "", byte, who, other_wrote ? "wrote" : "read",
            write ? (other_wrote ? "write-after-write" : "write-after-read") : "read-after-write");
    if (__sanitizer_print_stack_trace) __sanitizer_print_stack_trace();
    abort();
}

GLIA_EMU_HOT void check_word(Cell &c, bool write, const char *name, size_t byte) {
    const int t = cur->running, w = t / 32;
    if (concurrent(c.wt, c.wbe, c.wwe, t)) race(t, write, c.wt, true, name, byte);
    if (write) {
        if (c.rbe == block_epoch &&
            (c.rt == kWarps || c.rwarp != w || (c.rwe == warp_epoch[w] && c.rt != t)))
            race(t, true, c.rt, false, name, byte);
        c.wt = t, c.wbe = block_epoch, c.wwe = warp_epoch[w], c.rbe = 0;
    } else if (c.rbe != block_epoch) {
        c.rbe = block_epoch, c.rwe = warp_epoch[w], c.rt = t, c.rwarp = w;
    } else if (c.rt != kWarps) {
        if (c.rwarp != w) c.rt = kWarps;
        else if (c.rwe != warp_epoch[w]) c.rt = t, c.rwe = warp_epoch[w];  // the older reads are ordered
        else if (c.rt != t) c.rt = kLanes;
    }
}

// An access of n bytes at a by the running thread.
GLIA_EMU_HOT inline void shared_access(const void *a, size_t n, bool write) {
    const uintptr_t p = (uintptr_t)a;
    Cell *cells;
    size_t off, len;
    const char *name = nullptr;
    if (p - dyn_lo < dyn_len) {
        cells = dyn_cells.data(), off = p - dyn_lo, len = dyn_len;
    } else if (p - st_lo < st_hi - st_lo && cur) {
        const Static *s = nullptr;
        for (const Static &r : statics)
            if (p - r.lo < r.len) s = &r;
        if (!s) return;
        cells = st_cells.data() + s->cell0, off = p - s->lo, len = s->len, name = s->name;
    } else {
        return;
    }
    const size_t end = off + n < len ? off + n : len;
    for (size_t word = off / 4; word * 4 < end; word++) check_word(cells[word], write, name, off);
}

// A fiber's stack. Small matters: under ASan every swapcontext clears the
// shadow of the whole stack being entered (kStack / 8 bytes), which was
// most of the emulator's time at 256 KiB. The kernels' threads use a few
// KiB; the lowest kCanary bytes are checked after each block, so a kernel
// that outgrows its stack is reported instead of corrupting memory.
const size_t kStack = 48 * 1024, kCanary = 256;

// Fiber stacks, kept from launch to launch instead of allocated (and
// zeroed) per launch. Launches run one at a time, so one pool.
std::vector<std::unique_ptr<unsigned char[]>> stack_pool;

unsigned char *pool_stack(int i) {
    while ((int)stack_pool.size() <= i)
        stack_pool.emplace_back(new unsigned char[kStack]);  // left uninitialised
    return stack_pool[i].get();
}

void fiber_main(void) {
    Grid *g = cur;
    Fiber &f = g->fibers[g->running];
    (*g->body)();
    f.done = true;
    // the thread has exited: it no longer takes part in its barriers
    Barrier *bars[2] = {&g->block_bar, &g->warps[f.tid / 32]};
    for (Barrier *b : bars) {
        b->expected--;
        if (b->arrived > 0 && b->arrived >= b->expected) b->release();
    }
    // returning resumes uc_link: the scheduler
}

// Waits at b: the last fiber to arrive releases the others and goes on.
void barrier_wait(Barrier *b) {
    Grid *g = cur;
    if (++b->arrived >= b->expected) {
        b->release();
        return;
    }
    Fiber &f = g->fibers[g->running];
    f.waiting = b;
    f.wait_gen = b->gen;
    swapcontext(&f.ctx, &g->sched);
}

// GLIA_EMU_ORDER=reverse runs the fibers of each pass last to first. A
// missing barrier shows up in one order or the other: with ascending order a
// thread reading what a lower thread wrote without a barrier still sees it,
// with descending order it does not. CI runs the kernel tests both ways.
bool reverse_order() {
    static int r = -1;
    if (r < 0) {
        const char *e = getenv("GLIA_EMU_ORDER");
        r = e && !strcmp(e, "reverse");
    }
    return r == 1;
}

// Runs every fiber of the current block to its end, round robin, resuming a
// waiting fiber once its barrier has been released.
void run_block(Grid *g) {
    const bool rev = reverse_order();
    for (;;) {
        int live = 0, progressed = 0;
        for (int i = 0; i < g->nthreads; i++) {
            const int t = rev ? g->nthreads - 1 - i : i;
            Fiber &f = g->fibers[t];
            if (f.done) continue;
            live++;
            if (f.waiting && f.waiting->gen == f.wait_gen) continue;  // still blocked
            f.waiting = nullptr;
            g->running = t;
            threadIdx = f.idx;
            swapcontext(&g->sched, &f.ctx);
            progressed++;
        }
        if (!live) return;
        if (!progressed) {
            fprintf(stderr, "glia CUDA emulator: deadlock in block (%u, %u, %u): some threads wait at a "
                            "barrier that the others never reach\n",
                    blockIdx.x, blockIdx.y, blockIdx.z);
            abort();
        }
    }
}

cudaError_t last_error = cudaSuccess;
size_t mem_in_use = 0;
pthread_mutex_t mem_mu = PTHREAD_MUTEX_INITIALIZER;

double now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

size_t mem_cap() {
    const char *e = getenv("GLIA_EMU_MEM_BYTES");
    return e && *e ? (size_t)strtoull(e, nullptr, 10) : (size_t)64 << 30;
}

}  // namespace

namespace glia_emu {

// Each kernel's cudaFuncAttributeMaxDynamicSharedMemorySize (absent: 48 KiB).
std::vector<std::pair<const void *, int>> smem_optin;

cudaError_t set_max_dynamic_smem(const void *kernel, int bytes) {
    if (bytes < 0 || bytes > 227 * 1024) return cudaErrorInvalidValue;
    for (auto &e : smem_optin)
        if (e.first == kernel) return e.second = bytes, cudaSuccess;
    smem_optin.emplace_back(kernel, bytes);
    return cudaSuccess;
}

static size_t max_dynamic_smem(const void *kernel) {
    for (auto &e : smem_optin)
        if (e.first == kernel) return (size_t)e.second > 48 * 1024 ? (size_t)e.second : 48 * 1024;
    return 48 * 1024;
}

void run_grid(dim3 grid, dim3 block, size_t smem, const void *kernel, const std::function<void()> &body) {
    long nthreads = (long)block.x * block.y * block.z;
    if (nthreads < 1 || nthreads > 1024 || grid.x < 1 || grid.y < 1 || grid.z < 1 ||
        grid.y > 65535 || grid.z > 65535 || smem > 227 * 1024) {
        last_error = cudaErrorInvalidConfiguration;
        return;
    }
    // as on the GPU: more than 48 KiB of dynamic shared memory needs the
    // kernel's opt-in (cudaFuncSetAttribute), else the launch fails
    if (smem > max_dynamic_smem(kernel)) {
        last_error = cudaErrorInvalidValue;
        return;
    }
    if (cur) {
        fprintf(stderr, "glia CUDA emulator: a kernel launched another kernel\n");
        abort();
    }
    Grid g;
    g.grid = grid, g.block = block, g.body = &body;
    g.nthreads = (int)nthreads;
    g.nwarps = (int)((nthreads + 31) / 32);
    g.warps = std::vector<Barrier>(g.nwarps);
    g.block_bar.epoch = &block_epoch;
    for (int i = 0; i < g.nwarps; i++) g.warps[i].epoch = &warp_epoch[i];
    g.exchange.assign((size_t)g.nwarps * 32, 0.0);
    g.smem.assign(smem + 16, 0xFF);
    dyn_lo = (uintptr_t)g.smem.data(), dyn_len = g.smem.size();
    if (dyn_cells.size() < dyn_len / 4 + 1) dyn_cells.resize(dyn_len / 4 + 1);
    g.fibers = std::vector<Fiber>(g.nthreads);
    for (int t = 0; t < g.nthreads; t++) {
        g.fibers[t].stack = pool_stack(t);
        g.fibers[t].tid = t;
        g.fibers[t].idx = {(unsigned)t % block.x, (unsigned)t / block.x % block.y,
                           (unsigned)t / (block.x * block.y)};
    }
    gridDim = grid, blockDim = block;
    cur = &g;
    const long nblocks = (long)grid.x * grid.y * grid.z;
    for (long blk = 0; blk < nblocks; blk++) {
        blockIdx = {(unsigned)(blk % grid.x), (unsigned)(blk / grid.x % grid.y),
                    (unsigned)(blk / ((long)grid.x * grid.y))};
        g.block_bar.reset(g.nthreads);
        block_epoch++;  // nothing orders this block's accesses after the last block's
        for (int i = 0; i < g.nwarps; i++) {
            int n = g.nthreads - 32 * i;
            g.warps[i].reset(n < 32 ? n : 32);
        }
        for (Fiber &f : g.fibers) {
            memset(f.stack, 0xA5, kCanary);
            f.done = false;
            f.waiting = nullptr;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack;
            f.ctx.uc_stack.ss_size = kStack;
            f.ctx.uc_link = &g.sched;
            makecontext(&f.ctx, fiber_main, 0);
        }
        run_block(&g);
        for (Fiber &f : g.fibers)
            for (size_t i = 0; i < kCanary; i++)
                if (f.stack[i] != 0xA5) {
                    fprintf(stderr, "glia CUDA emulator: thread %d of block (%u, %u, %u) overflowed "
                                    "its %zu KiB stack\n",
                            f.tid, blockIdx.x, blockIdx.y, blockIdx.z, kStack / 1024);
                    abort();
                }
    }
    cur = nullptr;
    dyn_len = 0;
}

bool shared_static(const void *p, size_t bytes, const char *name) {
    statics.push_back({(uintptr_t)p, bytes, st_cells.size(), name});
    st_cells.resize(st_cells.size() + bytes / 4 + 1);
    if ((uintptr_t)p < st_lo) st_lo = (uintptr_t)p;
    if ((uintptr_t)p + bytes > st_hi) st_hi = (uintptr_t)p + bytes;
    return true;
}

// An H100's SM: 2048 threads, 32 blocks, 228 KiB of shared memory with
// 1 KiB reserved per block.
int occupancy(const void *kernel, int threads, size_t smem) {
    if (smem > max_dynamic_smem(kernel)) return 0;
    int n = 2048 / ((threads + 31) / 32 * 32);
    const int by_smem = (int)(228 * 1024 / (smem + 1024));
    n = n < by_smem ? n : by_smem;
    return n < 32 ? n : 32;
}

void *dynamic_smem(void) {
    uintptr_t p = (uintptr_t)cur->smem.data();
    return (void *)((p + 15) & ~(uintptr_t)15);
}

double warp_exchange(double mine, int src, unsigned mask, const char *what) {
    Grid *g = cur;
    int tid = g->running, warp = tid / 32;
    double *buf = g->exchange.data() + (size_t)warp * 32;
    buf[tid % 32] = mine;
    barrier_wait(&g->warps[warp]);
    check_mask(mask, what);
    double got = buf[src];
    barrier_wait(&g->warps[warp]);
    return got;
}

unsigned warp_ballot(int pred, unsigned mask, const char *what) {
    Grid *g = cur;
    int tid = g->running, warp = tid / 32;
    double *buf = g->exchange.data() + (size_t)warp * 32;
    buf[tid % 32] = pred ? 1.0 : 0.0;
    barrier_wait(&g->warps[warp]);
    check_mask(mask, what);
    unsigned bits = 0;
    for (int l = 0; l < 32; l++)
        if ((mask >> l & 1u) && warp * 32 + l < g->nthreads && buf[l] != 0.0) bits |= 1u << l;
    barrier_wait(&g->warps[warp]);
    return bits;
}

void check_mask(unsigned mask, const char *what) {
    Grid *g = cur;
    const int tid = g->running, lane = tid % 32, base = tid - lane;
    const char *why = nullptr;
    int bad = lane;
    if (!(mask >> lane & 1u)) {
        why = "leaves out the calling lane";
    } else {
        for (int l = 0; l < 32 && !why; l++) {
            if (!(mask >> l & 1u)) continue;
            if (base + l >= g->nthreads) why = "names a lane beyond the block", bad = l;
            else if (g->fibers[base + l].done) why = "names a lane that has exited", bad = l;
        }
    }
    if (!why) return;
    fprintf(stderr, "glia CUDA emulator: %s with mask 0x%08x in thread %d of block (%u, %u, %u): the mask %s "
                    "(lane %d)\n", what, mask, tid, blockIdx.x, blockIdx.y, blockIdx.z, why, bad);
    abort();
}

bool launch_bounds_exceeded(long max_threads) {
    if ((long)blockDim.x * blockDim.y * blockDim.z <= max_threads) return false;
    last_error = cudaErrorLaunchOutOfResources;  // what the GPU answers; nothing runs
    return true;
}

}  // namespace glia_emu

long long clock64(void) { return (long long)(now_ms() * 1e6); }

void __syncthreads(void) { barrier_wait(&cur->block_bar); }
// The mask is checked while every live lane is still inside the call (a
// second barrier), as in warp_exchange: a lane released first could exit.
void __syncwarp(unsigned mask) {
    barrier_wait(&cur->warps[cur->running / 32]);
    glia_emu::check_mask(mask, "__syncwarp");
    barrier_wait(&cur->warps[cur->running / 32]);
}

// Fibers switch only at barriers, so a read-modify-write here is atomic; this
// file is not instrumented, so the race check does not see it.
template <class T> static T fetch_add(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
int atomicAdd(int *p, int v) { return fetch_add(p, v); }
unsigned atomicAdd(unsigned *p, unsigned v) { return fetch_add(p, v); }
float atomicAdd(float *p, float v) { return fetch_add(p, v); }
double atomicAdd(double *p, double v) { return fetch_add(p, v); }

// ---- runtime API ------------------------------------------------------------------

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    }
    return "unknown error";
}

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    }
    return "cudaErrorUnknown";
}

static int emu_devices(void) {
    const char *e = getenv("GLIA_EMU_DEVICES");
    return e && *e ? atoi(e) : 1;
}

cudaError_t cudaGetDeviceCount(int *n) {
    *n = emu_devices();
    return *n > 0 ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaSetDevice(int d) {
    return d >= 0 && d < emu_devices() ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "glia CPU emulator");
    p->totalGlobalMem = mem_cap();
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->multiProcessorCount = 1;
    p->l2CacheSize = 1 << 20;
    p->major = 9, p->minor = 0;
    p->maxThreadsPerBlock = 1024;
    p->warpSize = 32;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int) {
    if (attr != cudaDevAttrMaxThreadsPerMultiProcessor) return cudaErrorInvalidValue;
    *value = 2048;
    return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }

// Each allocation carries its size in a 256-byte header, for the cap.
cudaError_t cudaMalloc(void **p, size_t bytes) {
    pthread_mutex_lock(&mem_mu);
    bool fits = mem_in_use + bytes <= mem_cap();
    if (fits) mem_in_use += bytes;
    pthread_mutex_unlock(&mem_mu);
    // exactly the bytes asked for after the header, so AddressSanitizer
    // (GLIA_SANITIZE) catches a kernel reading or writing past the end
    void *raw_v = nullptr;
    if (fits && posix_memalign(&raw_v, 256, 256 + bytes) != 0) raw_v = nullptr;
    unsigned char *raw = (unsigned char *)raw_v;
    if (!raw) {
        if (fits) {
            pthread_mutex_lock(&mem_mu);
            mem_in_use -= bytes;
            pthread_mutex_unlock(&mem_mu);
        }
        *p = nullptr;
        return cudaErrorMemoryAllocation;
    }
    memcpy(raw, &bytes, sizeof bytes);
    memset(raw + 256, 0xFF, bytes);
    *p = raw + 256;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    unsigned char *raw = (unsigned char *)p - 256;
    size_t bytes;
    memcpy(&bytes, raw, sizeof bytes);
    pthread_mutex_lock(&mem_mu);
    mem_in_use -= bytes;
    pthread_mutex_unlock(&mem_mu);
    free(raw);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    pthread_mutex_lock(&mem_mu);
    *total_bytes = mem_cap();
    *free_bytes = mem_cap() - mem_in_use;
    pthread_mutex_unlock(&mem_mu);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind) {
    glia_emu::nccl_drain();
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
                            cudaStream_t) {
    return cudaMemcpy(dst, src, bytes, k);
}
cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    if (bytes) memset(p, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t) {
    return cudaMemset(p, value, bytes);
}
cudaError_t cudaDeviceSynchronize(void) {
    glia_emu::nccl_drain();
    return cudaSuccess;
}

struct glia_emu_stream {
    int unused;
};
struct glia_emu_event {
    double ms;
};
cudaError_t cudaStreamCreate(cudaStream_t *s) {
    *s = new glia_emu_stream();
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    delete s;
    return cudaSuccess;
}
// Blocking waits finish the NCCL collectives in flight (the GPU would finish
// them before what waits on them); an event query only looks.
cudaError_t cudaStreamSynchronize(cudaStream_t) {
    glia_emu::nccl_drain();
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) {
    glia_emu::nccl_drain();
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new glia_emu_event();
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    e->ms = now_ms();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
    glia_emu::nccl_drain();
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t) { return glia_emu::nccl_busy() ? cudaErrorNotReady : cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)(b->ms - a->ms);
    return cudaSuccess;
}

// ---- the instrumentation's hooks (see "shared-memory race check" above) ----------------
// Named by asm labels: GCC knows __tsan_* as builtins, with its own prototypes.
extern "C" {
void tsan_init(void) __asm__("__tsan_init");
void tsan_init(void) {}
void tsan_func_entry(void *) __asm__("__tsan_func_entry");
void tsan_func_entry(void *) {}
void tsan_func_exit(void *) __asm__("__tsan_func_exit");
void tsan_func_exit(void *) {}
#define GLIA_EMU_HOOKS(n)                                                                      \
    void tsan_read##n(void *p) __asm__("__tsan_read" #n);                                      \
    GLIA_EMU_HOT void tsan_read##n(void *p) {                                                  \
        shared_access(p, n, false);                                                            \
        if (asan_load##n) asan_load##n(p);                                                     \
    }                                                                                          \
    void tsan_write##n(void *p) __asm__("__tsan_write" #n);                                    \
    GLIA_EMU_HOT void tsan_write##n(void *p) {                                                 \
        shared_access(p, n, true);                                                             \
        if (asan_store##n) asan_store##n(p);                                                   \
    }                                                                                          \
    void tsan_unaligned_read##n(void *p) __asm__("__tsan_unaligned_read" #n);                  \
    void tsan_unaligned_read##n(void *p) { tsan_read##n(p); }                                  \
    void tsan_unaligned_write##n(void *p) __asm__("__tsan_unaligned_write" #n);                \
    void tsan_unaligned_write##n(void *p) { tsan_write##n(p); }
GLIA_EMU_HOOKS(1) GLIA_EMU_HOOKS(2) GLIA_EMU_HOOKS(4) GLIA_EMU_HOOKS(8) GLIA_EMU_HOOKS(16)
// the guard of a function-local static (the registrations cu2cpp.pl emits)
unsigned char tsan_atomic8_load(const volatile unsigned char *p, int) __asm__("__tsan_atomic8_load");
unsigned char tsan_atomic8_load(const volatile unsigned char *p, int) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
void tsan_read_range(void *p, size_t n) __asm__("__tsan_read_range");
void tsan_read_range(void *p, size_t n) {
    shared_access(p, n, false);
    if (asan_loadN) asan_loadN(p, n);
}
void tsan_write_range(void *p, size_t n) __asm__("__tsan_write_range");
void tsan_write_range(void *p, size_t n) {
    shared_access(p, n, true);
    if (asan_storeN) asan_storeN(p, n);
}
}
