// Device selection and memory: thin wrappers so Rust sees plain C functions.
#include <cuda_runtime.h>
#include <string.h>

#include "common.cuh"

extern "C" int wick_cuda_device_count(int *count) {
    return (int)cudaGetDeviceCount(count);
}

extern "C" int wick_cuda_init(int device, char *name, int name_len, size_t *total_mem,
                              int *sm_major, int *sm_minor) {
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return (int)e;
    cudaDeviceProp p;
    e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) return (int)e;
    if (name_len > 0) {
        strncpy(name, p.name, (size_t)name_len - 1);
        name[name_len - 1] = 0;
    }
    *total_mem = p.totalGlobalMem;
    *sm_major = p.major;
    *sm_minor = p.minor;
    return 0;
}

extern "C" const char *wick_cuda_error_string(int err) {
    return cudaGetErrorString((cudaError_t)err);
}

extern "C" int wick_cuda_malloc(void **p, size_t bytes) { return (int)cudaMalloc(p, bytes); }
extern "C" int wick_cuda_free(void *p) { return (int)cudaFree(p); }
extern "C" int wick_cuda_memset(void *p, int v, size_t bytes) {
    return (int)cudaMemset(p, v, bytes);
}
extern "C" int wick_cuda_h2d(void *dst, const void *src, size_t bytes) {
    return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
}
extern "C" int wick_cuda_d2h(void *dst, const void *src, size_t bytes) {
    return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
}
extern "C" int wick_cuda_d2d(void *dst, const void *src, size_t bytes) {
    return (int)cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice);
}
extern "C" int wick_cuda_sync(void) { return (int)cudaDeviceSynchronize(); }

extern "C" int wick_cuda_supports_type(int type) { return block_bytes(type) != 0; }
