// Emulation of bulk_copy.cuh: mbarriers as host records keyed by their shared-memory
// offset, and each bulk copy done either at once or only when a lane first waits on its
// barrier (chosen at random), so that code reading a slot before its barrier, or refilling
// a slot that lanes still read, shows up as wrong results.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

extern bool wick_bulk;
extern uint8_t *emu_smem_lo, *emu_smem_hi;
extern thread_local std::mt19937 emu_rng;

struct EmuBulk { uint8_t *dst; const void *src; uint32_t n; };
struct EmuBar {
    uint32_t completed = 0;  // phases completed so far
    int arrivals = 1;        // still to come in the current phase
    int64_t tx = 0;          // bytes still to land in the current phase
    std::vector<EmuBulk> queued;
};
inline std::mutex emu_bar_mu;
inline std::map<uint32_t, EmuBar> emu_bars;

inline uint32_t smem_addr(const void *p) {
    const uint8_t *b = (const uint8_t *)p;
    if (b < emu_smem_lo || b > emu_smem_hi) { fprintf(stderr, "smem_addr outside shared memory\n"); abort(); }
    return (uint32_t)(b - emu_smem_lo);
}
inline EmuBar &emu_bar(uint32_t a) {
    auto it = emu_bars.find(a);
    if (it == emu_bars.end()) { fprintf(stderr, "mbarrier used before mbar_init\n"); abort(); }
    return it->second;
}
inline void emu_bar_land(EmuBar &b) {
    for (auto &c : b.queued) { memcpy(c.dst, c.src, c.n); b.tx -= c.n; }
    b.queued.clear();
    if (b.arrivals == 0 && b.tx == 0) { b.completed++; b.arrivals = 1; }
}
inline void mbar_init(uint32_t bar) {
    if (bar % 8 || emu_smem_lo + bar + 8 > emu_smem_hi) { fprintf(stderr, "mbarrier misplaced\n"); abort(); }
    std::lock_guard<std::mutex> g(emu_bar_mu);
    emu_bars[bar] = EmuBar{};
}
inline void mbar_init_fence() {}
inline void mbar_expect(uint32_t bar, uint32_t bytes) {
    std::lock_guard<std::mutex> g(emu_bar_mu);
    EmuBar &b = emu_bar(bar);
    if (b.arrivals <= 0) { fprintf(stderr, "mbarrier: arrival past its count\n"); abort(); }
    b.arrivals--;
    b.tx += bytes;
    if (b.queued.empty() && b.tx == 0) emu_bar_land(b);
}
inline void bulk_copy(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
    if (dst % 16 || (uintptr_t)src % 16 || bytes % 16 || bytes == 0) { fprintf(stderr, "bulk copy misaligned\n"); abort(); }
    uint8_t *d = emu_smem_lo + dst;
    if (d + bytes > emu_smem_hi) { fprintf(stderr, "bulk copy past shared memory\n"); abort(); }
    std::lock_guard<std::mutex> g(emu_bar_mu);
    EmuBar &b = emu_bar(bar);
    b.queued.push_back({d, src, bytes});
    if (emu_rng() % 2) emu_bar_land(b);
}
inline void mbar_wait(uint32_t bar, uint32_t parity) {
    for (;;) {
        {
            std::lock_guard<std::mutex> g(emu_bar_mu);
            EmuBar &b = emu_bar(bar);
            if (b.arrivals == 0) emu_bar_land(b);
            if ((b.completed & 1) != parity) return;
        }
        std::this_thread::yield();
    }
}
