// Hopper's bulk copies (cp.async.bulk): one instruction from one lane moves a whole run of
// bytes from global to shared memory, and an mbarrier in shared memory counts the bytes
// as they land. The streaming decode kernels use them in place of cp.async, which needs
// one 16-byte instruction per lane per piece, each with its own 64-bit address arithmetic:
// decode on an H200 is bound by instruction issue (docs/PERF.md, session 20), and those
// copies were a third of the step loop's instructions.
//
// Only compute capability 9.0 and later have them; launchers choose the bulk path only
// there (wick_bulk), and on older architectures these functions trap.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

// Set by wick_cuda_init: compute capability 9.0+, WICK_BULK not "0".
extern bool wick_bulk;

// Shared-memory operands are 32-bit shared-window addresses (smem_addr), so that callers
// compute them once, outside their loops.
__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// A barrier that completes a phase once one arrival and its expected bytes have come.
__device__ __forceinline__ void mbar_init(uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar) : "memory");
#else
    __trap();
#endif
}

// Makes barriers just initialised visible to the copy engine (the async proxy).
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#else
    __trap();
#endif
}

// The arrival of this phase, announcing `bytes` still to come from bulk copies.
__device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar),
                 "r"(bytes)
                 : "memory");
#else
    __trap();
#endif
}

// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global src to shared dst,
// counted on bar when they land. Global reads bypass L1, as cp.async.cg's do.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void *src, uint32_t bytes,
                                          uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
        ::"r"(dst), "l"(src), "r"(bytes), "r"(bar)
        : "memory");
#else
    __trap();
#endif
}

// Waits until the barrier's phase with this parity (0 for its first, 1 for the next, ...)
// has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Labels are local to the braces, so every inlined copy may reuse them.
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
#else
    __trap();
#endif
}
