// The fiber scheduler behind cuda_emu.h: runs a kernel launch (grid, block, dynamic shared memory,
// arguments) on the host, one fiber per CUDA thread, blocks in turn. See cuda_emu.h for the model.
#include "cuda_emu.h"

#include <setjmp.h>
#include <ucontext.h>

#include <cstdio>
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace nvg_emu {
namespace {

constexpr size_t kStackBytes = 64 * 1024;

struct Fiber {
    ucontext_t ctx;   // only to enter the fiber the first time
    jmp_buf resume;   // where the fiber continues after a yield
    ThreadState state;
    bool done = false;
    bool started = false;
};

// Fiber stacks, allocated once per OS thread and reused by every launch (not zero-filled).
thread_local std::vector<std::unique_ptr<char[]>> stack_pool;

struct Warp {
    uint64_t slots[32];
    uint32_t fragments[32][8];
    unsigned arrived = 0;
    unsigned generation = 0;
    unsigned lanes = 0;
};

// One launch in progress (per OS thread, so independent launches may run on several threads).
struct Launch {
    Trampoline kernel = nullptr;
    void** args = nullptr;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<char> smem;
    ucontext_t scheduler;
    jmp_buf scheduler_resume;
    size_t current = 0;
    unsigned live = 0;
    unsigned block_arrived = 0;
    unsigned block_generation = 0;
    // Arrivals at barriers and finished fibers: a scheduler pass without any means deadlock.
    uint64_t events = 0;
};

thread_local Launch* active = nullptr;

std::map<std::string, Trampoline>& registry() {
    static std::map<std::string, Trampoline> r;
    return r;
}

// Switches use _setjmp/_longjmp (no signal-mask system call, unlike swapcontext: ~100× faster); the
// ucontext is only used to start a fiber on its own stack.
void yield_to_scheduler() {
    Launch& l = *active;
    if (_setjmp(l.fibers[l.current].resume) == 0) _longjmp(l.scheduler_resume, 1);
}

void fiber_entry() {
    Launch& l = *active;
    l.kernel(l.args);
    l.fibers[l.current].done = true;
    l.live--;
    l.events++;
    _longjmp(l.scheduler_resume, 1);  // never returns into uc_link
}

}  // namespace

const ThreadState& current() { return active->fibers[active->current].state; }

void* dynamic_smem() { return active->smem.data(); }

void sync_block() {
    Launch& l = *active;
    l.events++;
    unsigned gen = l.block_generation;
    if (++l.block_arrived == l.fibers.size()) {
        l.block_arrived = 0;
        l.block_generation++;
        return;
    }
    while (l.block_generation == gen) yield_to_scheduler();
}

void sync_warp() {
    Launch& l = *active;
    Warp& w = l.warps[l.current / 32];
    l.events++;
    unsigned gen = w.generation;
    if (++w.arrived == w.lanes) {
        w.arrived = 0;
        w.generation++;
        return;
    }
    while (w.generation == gen) yield_to_scheduler();
}

uint64_t* warp_slots() { return active->warps[active->current / 32].slots; }

uint32_t (*warp_fragments())[8] { return active->warps[active->current / 32].fragments; }

unsigned int lane_count() { return active->warps[active->current / 32].lanes; }

void register_kernel(const char* name, Trampoline t) { registry()[name] = t; }

}  // namespace nvg_emu

using namespace nvg_emu;

// Runs `name` over the grid. Returns 0, or 1 for an unknown kernel, 2 for a bad configuration, 3 when
// a block finished with threads stuck at a barrier (a kernel bug: divergent __syncthreads).
extern "C" int nvg_emu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
                              unsigned smem_bytes, void** args) {
    auto it = registry().find(name);
    if (it == registry().end()) return 1;
    unsigned threads = block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return 2;

    Launch l;
    l.kernel = it->second;
    l.args = args;
    l.smem.assign(smem_bytes, 0);
    l.fibers.resize(threads);
    l.warps.resize((threads + 31) / 32);
    for (size_t w = 0; w < l.warps.size(); ++w) l.warps[w].lanes = std::min(32u, threads - 32u * (unsigned)w);
    while (stack_pool.size() < threads) stack_pool.emplace_back(new char[kStackBytes]);
    Launch* outer = active;
    active = &l;
    int status = 0;
    for (unsigned bz = 0; bz < grid[2] && status == 0; ++bz)
        for (unsigned by = 0; by < grid[1] && status == 0; ++by)
            for (unsigned bx = 0; bx < grid[0] && status == 0; ++bx) {
                l.live = threads;
                l.block_arrived = 0;
                for (auto& w : l.warps) w.arrived = 0;
                for (unsigned t = 0; t < threads; ++t) {
                    Fiber& f = l.fibers[t];
                    f.done = false;
                    f.started = false;
                    f.state.thread_idx = {t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1])};
                    f.state.block_idx = {bx, by, bz};
                    f.state.block_dim = {block[0], block[1], block[2]};
                    f.state.grid_dim = {grid[0], grid[1], grid[2]};
                    f.state.linear = t;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = stack_pool[t].get();
                    f.ctx.uc_stack.ss_size = kStackBytes;
                    f.ctx.uc_link = &l.scheduler;
                    makecontext(&f.ctx, fiber_entry, 0);
                }
                // Round robin until every fiber has finished.
                while (l.live > 0) {
                    uint64_t before = l.events;
                    unsigned gen_before = l.block_generation;
                    for (size_t t = 0; t < l.fibers.size(); ++t) {
                        if (l.fibers[t].done) continue;
                        l.current = t;
                        if (_setjmp(l.scheduler_resume) == 0) {
                            Fiber& f = l.fibers[l.current];
                            if (!f.started) {
                                f.started = true;
                                swapcontext(&l.scheduler, &f.ctx);
                            } else {
                                _longjmp(f.resume, 1);
                            }
                        }
                    }
                    if (l.events == before && l.block_generation == gen_before && l.live > 0) {
                        status = 3;  // every live fiber waits at a barrier that cannot complete
                        break;
                    }
                }
            }
    active = outer;
    return status;
}
