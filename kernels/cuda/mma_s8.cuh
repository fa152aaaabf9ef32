// The warp-wide PTX instructions of the tensor-core kernels (gemm_q8.cu, gemm_f16.cu), and
// the packed f16 arithmetic of gemm_f16.cu, each behind a small function, so that a host
// build can swap this one header for an emulation and check the kernels' indexing on a
// machine without a GPU.
#pragma once

#include <stdint.h>

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 with C = 0 (fragments: see gemm_q8.cu).
__device__ __forceinline__ void mma_k32(int c[4], int a0, int a1, int a2, int a3, int b0,
                                        int b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
}

// The first half of mma_k32 along k: A = {a0, a1}, B = {b0}.
__device__ __forceinline__ void mma_k16(int c[4], int a0, int a1, int b0) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
        "{%4, %5}, {%6}, {%7, %7, %7, %7};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(b0), "r"(0));
}

// mma_k32 and mma_k16 with C = c0 in every lane: gemm_q8_wide2_kernel passes the bits of
// 1.5 * 2^23, so that each s32 result reads as a float 1.5 * 2^23 + sum (see i2f_bits).
__device__ __forceinline__ void mma_k32_c(int c[4], int a0, int a1, int a2, int a3, int b0,
                                          int b1, int c0) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(c0));
}

__device__ __forceinline__ void mma_k16_c(int c[4], int a0, int a1, int b0, int c0) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
        "{%4, %5}, {%6}, {%7, %7, %7, %7};"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(b0), "r"(c0));
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, accumulating into c: A (16 x 16) in
// a[0..3] = (row g, k 2t..2t+1), (row g + 8, same k), (row g, k 8 + 2t..), (row g + 8, same);
// B (16 x 8) in b0 = (k 2t..2t+1, col g), b1 = (k 8 + 2t.., col g); C as for the s8 forms.
__device__ __forceinline__ void mma_f16(float c[4], const uint32_t a[4], uint32_t b0,
                                        uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// x as an f16 in both halves of a word.
__device__ __forceinline__ uint32_t f16x2_splat(float x) {
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %1;" : "=r"(r) : "f"(x));
    return r;
}

// The four int8 of w as f16 (q0, q1) in lo and (q2, q3) in hi, each q times d plus m
// rounded once (d and m as f16x2_splat): the bytes, offset to unsigned, become the low
// mantissa bits of 1024 (0x6400), so v = 1152 + q exactly; v - 1152 is exact, then one FMA.
__device__ __forceinline__ void s8x4_to_f16(uint32_t w, uint32_t d, uint32_t m, uint32_t &lo,
                                            uint32_t &hi) {
    const uint32_t u = w ^ 0x80808080u;
    uint32_t a = __byte_perm(u, 0x64646464u, 0x4140), b = __byte_perm(u, 0x64646464u, 0x4342);
    asm("sub.f16x2 %0, %0, %1;" : "+r"(a) : "r"(0x64806480u));
    asm("sub.f16x2 %0, %0, %1;" : "+r"(b) : "r"(0x64806480u));
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(lo) : "r"(a), "r"(d), "r"(m));
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(hi) : "r"(b), "r"(d), "r"(m));
}

// ldmatrix.x4: four 8 x 16-byte matrices from shared memory; lane 8j + r gives the address
// of row r of matrix j, and r[j] of lane 4g + t receives bytes 4t..4t+3 of row g of matrix j.
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// Asynchronous copies global -> shared of 16 or 4 bytes; with ok false nothing is read and
// the destination is zero-filled (src must still be a valid pointer).
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool ok) {
    uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src),
                 "r"(ok ? 16 : 0));
}

__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool ok) {
    uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(d), "l"(src),
                 "r"(ok ? 4 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}
