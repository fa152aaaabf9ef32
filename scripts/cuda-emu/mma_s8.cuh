// Emulation of mma_s8.cuh: every lane is a host thread; warp-wide instructions exchange
// operands through a per-warp table between two warp barriers.
#pragma once
#include <cuda_fp16.h>
#include <cstdint>
#include <barrier>
#include <vector>
#include <functional>
#include <random>
#include <thread>
#include <chrono>
struct EmuWarp {
    std::barrier<> *bar;
    uint32_t in[32][8];
    const void *ptr[32];
};
extern EmuWarp emu_warps[32];
inline EmuWarp &emu_w() { return emu_warps[threadIdx.x / 32]; }
inline int emu_lane() { return threadIdx.x % 32; }

// A shuffle over the whole warp: every lane posts its 4-byte value, then reads lane src's.
template <class T>
inline T emu_shfl(T x, int src) {
    static_assert(sizeof(T) == 4);
    EmuWarp &W = emu_w();
    memcpy(&W.in[emu_lane()][0], &x, 4);
    W.bar->arrive_and_wait();
    T r;
    memcpy(&r, &W.in[src][0], 4);
    W.bar->arrive_and_wait();
    return r;
}
inline float emu_shfl_xor(float x, int m) { return emu_shfl(x, emu_lane() ^ m); }

// warp_sum and warp_max (common.cuh) in one exchange: each lane runs the same butterfly
// (x += shfl_xor(x, o) for o = 16 .. 1) over all 32 values, so the sums round as on the GPU.
template <class F>
inline float emu_butterfly(float x, F op) {
    EmuWarp &W = emu_w();
    int l = emu_lane();
    memcpy(&W.in[l][0], &x, 4);
    W.bar->arrive_and_wait();
    float v[32];
    for (int i = 0; i < 32; i++) memcpy(&v[i], &W.in[i][0], 4);
    W.bar->arrive_and_wait();
    for (int o = 16; o > 0; o >>= 1) {
        float n[32];
        for (int i = 0; i < 32; i++) n[i] = op(v[i], v[i ^ o]);
        memcpy(v, n, sizeof v);
    }
    return v[l];
}
inline float emu_warp_sum(float x) { return emu_butterfly(x, [](float a, float b) { return a + b; }); }
inline float emu_warp_max(float x) { return emu_butterfly(x, [](float a, float b) { return fmaxf(a, b); }); }

// A(row, k) of the 16 x 32 fragment held by {a0, a1, a2, a3} (PTX ISA fragment layout).
inline int emu_a(const EmuWarp &W, int row, int k, int base) {
    int lane = (row % 8) * 4 + (k % 16) / 4;
    int reg = (row >= 8 ? 1 : 0) + (k >= 16 ? 2 : 0);
    return (int8_t)(W.in[lane][base + reg] >> (8 * (k % 4)));
}
inline int emu_b(const EmuWarp &W, int k, int col, int base) {
    int lane = col * 4 + (k % 16) / 4;
    int reg = k >= 16 ? 1 : 0;
    return (int8_t)(W.in[lane][base + reg] >> (8 * (k % 4)));
}

extern thread_local std::mt19937 emu_rng;
// Full-warp only: every lane of the warp must arrive, as the kernels here guarantee. Some
// lanes then pause, so that a lane racing ahead into what others still read shows up.
void __syncwarp(unsigned) {
    emu_w().bar->arrive_and_wait();
    if (emu_rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));
}
int __shfl_sync(unsigned, int v, int src_lane) { return emu_shfl(v, src_lane); }
float __shfl_xor_sync(unsigned, float v, int lane_mask) { return emu_shfl_xor(v, lane_mask); }

inline void mma_k32(int c[4], int a0, int a1, int a2, int a3, int b0, int b1) {
    EmuWarp &W = emu_w();
    int l = emu_lane();
    uint32_t v[6] = {(uint32_t)a0, (uint32_t)a1, (uint32_t)a2, (uint32_t)a3, (uint32_t)b0, (uint32_t)b1};
    for (int i = 0; i < 6; i++) W.in[l][i] = v[i];
    W.bar->arrive_and_wait();
    int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; e++) {
        int row = g + 8 * (e / 2), col = 2 * t + e % 2, s = 0;
        for (int k = 0; k < 32; k++) s += emu_a(W, row, k, 0) * emu_b(W, k, col, 4);
        c[e] = s;
    }
    W.bar->arrive_and_wait();
}

inline void mma_k16(int c[4], int a0, int a1, int b0) {
    EmuWarp &W = emu_w();
    int l = emu_lane();
    W.in[l][0] = a0; W.in[l][1] = a1; W.in[l][4] = b0;
    W.bar->arrive_and_wait();
    int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; e++) {
        int row = g + 8 * (e / 2), col = 2 * t + e % 2, s = 0;
        for (int k = 0; k < 16; k++) s += emu_a(W, row, k, 0) * emu_b(W, k, col, 4);
        c[e] = s;
    }
    W.bar->arrive_and_wait();
}

inline void mma_k32_c(int c[4], int a0, int a1, int a2, int a3, int b0, int b1, int c0) {
    mma_k32(c, a0, a1, a2, a3, b0, b1);
    for (int e = 0; e < 4; e++) c[e] = (int)((uint32_t)c[e] + (uint32_t)c0);
}

inline void mma_k16_c(int c[4], int a0, int a1, int b0, int c0) {
    mma_k16(c, a0, a1, b0);
    for (int e = 0; e < 4; e++) c[e] = (int)((uint32_t)c[e] + (uint32_t)c0);
}

// mma_f16: A(row, k) and B(k, col) as f16 from the lanes' registers (PTX fragment layout);
// the products summed in double, then added to c.
inline float emu_h(const EmuWarp &W, int lane, int reg, int half) {
    return __half2float(__half((uint16_t)(W.in[lane][reg] >> (16 * half))));
}
inline void mma_f16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    EmuWarp &W = emu_w();
    int l = emu_lane();
    uint32_t v[6] = {a[0], a[1], a[2], a[3], b0, b1};
    for (int i = 0; i < 6; i++) W.in[l][i] = v[i];
    W.bar->arrive_and_wait();
    int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; e++) {
        int row = g + 8 * (e / 2), col = 2 * t + e % 2;
        double s = 0;
        for (int k = 0; k < 16; k++) {
            double x = emu_h(W, (row % 8) * 4 + (k % 8) / 2, (row >= 8) + 2 * (k >= 8), k % 2);
            double y = emu_h(W, col * 4 + (k % 8) / 2, 4 + (k >= 8), k % 2);
            s += x * y;
        }
        c[e] = (float)(c[e] + s);
    }
    W.bar->arrive_and_wait();
}
inline uint32_t f16x2_splat(float x) {
    uint32_t h = __float2half(x).x;
    return h | h << 16;
}
inline void s8x4_to_f16(uint32_t w, uint32_t d, uint32_t m, uint32_t &lo, uint32_t &hi) {
    double dh = __half2float(__half((uint16_t)d)), mh = __half2float(__half((uint16_t)m));
    uint32_t r[4];
    for (int i = 0; i < 4; i++) r[i] = __float2half((float)((int8_t)(w >> (8 * i)) * dh + mh)).x;
    lo = r[0] | r[1] << 16;
    hi = r[2] | r[3] << 16;
}

extern uint8_t *emu_smem_lo, *emu_smem_hi;
inline void emu_check_smem(const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    if (b < emu_smem_lo || b + n > emu_smem_hi) { fprintf(stderr, "shared access out of bounds\n"); abort(); }
}

inline void ldsm_x4(uint32_t r[4], const void *p) {
    EmuWarp &W = emu_w();
    int l = emu_lane();
    if ((uintptr_t)p % 16) { fprintf(stderr, "ldmatrix row misaligned\n"); abort(); }
    emu_check_smem(p, 16);
    W.ptr[l] = p;
    W.bar->arrive_and_wait();
    for (int j = 0; j < 4; j++) {
        const uint8_t *row = (const uint8_t *)W.ptr[8 * j + l / 4];
        memcpy(&r[j], row + 4 * (l % 4), 4);
    }
    W.bar->arrive_and_wait();
}

// cp.async: copies are queued per thread and done, group by group, either at commit or at
// the latest wait that needs them (chosen at random), so code that reads too early or
// writes a buffer still being read shows up as wrong results.
struct EmuCopy { void *dst; const void *src; int n; bool ok; };
extern thread_local std::vector<EmuCopy> emu_pending;
extern thread_local std::vector<std::vector<EmuCopy>> emu_groups;
extern thread_local std::mt19937 emu_rng;
inline void emu_do(const std::vector<EmuCopy> &g) {
    for (auto &c : g) {
        emu_check_smem(c.dst, c.n);
        if (c.ok) memcpy(c.dst, c.src, c.n);
        else memset(c.dst, 0, c.n);
    }
}
inline void cp_async16(void *dst, const void *src, bool ok) {
    if ((uintptr_t)dst % 16 || (ok && (uintptr_t)src % 16)) { fprintf(stderr, "cp.async 16 misaligned\n"); abort(); }
    emu_pending.push_back({dst, src, 16, ok});
}
inline void cp_async4(void *dst, const void *src, bool ok) {
    if ((uintptr_t)dst % 4 || (ok && (uintptr_t)src % 4)) { fprintf(stderr, "cp.async 4 misaligned\n"); abort(); }
    emu_pending.push_back({dst, src, 4, ok});
}
inline void cp_async_commit() {
    if (emu_rng() % 2) { emu_do(emu_pending); emu_groups.push_back({}); }
    else emu_groups.push_back(emu_pending);
    emu_pending.clear();
}
template <int N>
inline void cp_async_wait() {
    while ((int)emu_groups.size() > N) { emu_do(emu_groups.front()); emu_groups.erase(emu_groups.begin()); }
}
