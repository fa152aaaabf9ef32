// Device selection and memory: thin wrappers so Rust sees plain C functions.
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "stream.cuh"

#if WICK_TRACE
#include <stdio.h>

__device__ WickTraceRec wick_trace_buf[WICK_TRACE_CAP];
__device__ unsigned wick_trace_n = 0;

// Writes the timeline to $WICK_TRACE_OUT at exit: one line per stamp, "grid kind ns
// blocks threads", in the order the stamps were taken.
static void trace_dump() {
    const char *path = getenv("WICK_TRACE_OUT");
    unsigned n = 0;
    if (!path || cudaDeviceSynchronize() != cudaSuccess ||
        cudaMemcpyFromSymbol(&n, wick_trace_n, sizeof n) != cudaSuccess)
        return;
    if (n > WICK_TRACE_CAP) n = WICK_TRACE_CAP;
    WickTraceRec *r = (WickTraceRec *)malloc(sizeof(WickTraceRec) * (n ? n : 1));
    FILE *f = fopen(path, "w");
    if (r && f && cudaMemcpyFromSymbol(r, wick_trace_buf, sizeof(WickTraceRec) * n) == cudaSuccess)
        for (unsigned i = 0; i < n; i++)
            fprintf(f, "%llu %u %llu %u %u\n", r[i].grid, r[i].kind, r[i].ns, r[i].blocks,
                    r[i].threads);
    if (f) fclose(f);
    free(r);
}
#endif

cudaStream_t wick_stream = nullptr;
bool wick_pdl = false;
bool wick_early = true;
bool wick_bulk = false;

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
    if (!wick_stream) {
        e = cudaStreamCreateWithFlags(&wick_stream, cudaStreamNonBlocking);
        if (e != cudaSuccess) return (int)e;
    }
    *sm_major = p.major;
    *sm_minor = p.minor;
#if WICK_TRACE
    static bool dumps = false;
    if (!dumps) dumps = atexit(trace_dump) == 0;
#endif
    // Programmatic dependent launch needs Hopper (griddepcontrol); WICK_PDL=0 turns it off
    // for comparison runs.
    const char *env = getenv("WICK_PDL");
    wick_pdl = p.major >= 9 && !(env && strcmp(env, "0") == 0);
    env = getenv("WICK_EARLY");
    wick_early = !(env && strcmp(env, "0") == 0);
    // Bulk copies into the streaming decode's rings (bulk_copy.cuh); WICK_BULK=0 keeps
    // cp.async, for comparison runs.
    env = getenv("WICK_BULK");
    wick_bulk = p.major >= 9 && !(env && strcmp(env, "0") == 0);
    return 0;
}

extern "C" const char *wick_cuda_error_string(int err) {
    return cudaGetErrorString((cudaError_t)err);
}

extern "C" int wick_cuda_malloc(void **p, size_t bytes) { return (int)cudaMalloc(p, bytes); }
extern "C" int wick_cuda_free(void *p) { return (int)cudaFree(p); }
extern "C" int wick_cuda_memset(void *p, int v, size_t bytes) {
    cudaError_t e = cudaMemsetAsync(p, v, bytes, wick_stream);
    return (int)(e != cudaSuccess ? e : cudaStreamSynchronize(wick_stream));
}
// Host-to-device copies are queued on the stream, so they stay ordered with the kernels;
// from pageable memory they return once the source has been read.
extern "C" int wick_cuda_h2d(void *dst, const void *src, size_t bytes) {
    return (int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, wick_stream);
}
extern "C" int wick_cuda_d2h(void *dst, const void *src, size_t bytes) {
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, wick_stream);
    return (int)(e != cudaSuccess ? e : cudaStreamSynchronize(wick_stream));
}
extern "C" int wick_cuda_d2d(void *dst, const void *src, size_t bytes) {
    return (int)cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, wick_stream);
}
extern "C" int wick_cuda_sync(void) { return (int)cudaStreamSynchronize(wick_stream); }

extern "C" int wick_graph_begin(void) {
    return (int)cudaStreamBeginCapture(wick_stream, cudaStreamCaptureModeThreadLocal);
}

extern "C" int wick_graph_end(void **exec) {
    cudaGraph_t g;
    cudaError_t e = cudaStreamEndCapture(wick_stream, &g);
    if (e != cudaSuccess) return (int)e;
    cudaGraphExec_t x;
    e = cudaGraphInstantiate(&x, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) return (int)e;
    *exec = (void *)x;
    return 0;
}

extern "C" int wick_graph_launch(void *exec) {
    return (int)cudaGraphLaunch((cudaGraphExec_t)exec, wick_stream);
}

extern "C" int wick_graph_destroy(void *exec) {
    return (int)cudaGraphExecDestroy((cudaGraphExec_t)exec);
}

extern "C" int wick_cuda_supports_type(int type) { return block_bytes(type) != 0; }

// Events on the stream, for timing ops one by one (WICK_PROFILE).
extern "C" int wick_event_create(void **e) {
    return (int)cudaEventCreate(reinterpret_cast<cudaEvent_t *>(e));
}
extern "C" int wick_event_record(void *e) {
    return (int)cudaEventRecord((cudaEvent_t)e, wick_stream);
}
extern "C" int wick_event_elapsed(void *start, void *end, float *ms) {
    return (int)cudaEventElapsedTime(ms, (cudaEvent_t)start, (cudaEvent_t)end);
}
extern "C" int wick_event_destroy(void *e) { return (int)cudaEventDestroy((cudaEvent_t)e); }

// Token ids for the host, written by the kernel that picks them straight into pinned,
// mapped host memory (no copy queued between the pick and the next step), with an event
// recorded behind the pick: the host queues the next decode step before it waits for the
// id of this one.
constexpr int ID_SLOTS = 4;
static int *id_host = nullptr, *id_dev = nullptr;
static cudaEvent_t id_done[ID_SLOTS];

static cudaError_t id_setup() {
    if (id_host) return cudaSuccess;
    int *h = nullptr;
    cudaError_t e = cudaHostAlloc(&h, ID_SLOTS * sizeof(int), cudaHostAllocMapped);
    if (e == cudaSuccess) e = cudaHostGetDevicePointer(&id_dev, h, 0);
    for (int i = 0; i < ID_SLOTS && e == cudaSuccess; i++)
        e = cudaEventCreateWithFlags(&id_done[i], cudaEventDisableTiming);
    if (e == cudaSuccess) id_host = h;
    return e;
}

extern "C" int wick_id_slot(int slot, int32_t **d_ptr) {
    if (slot < 0 || slot >= ID_SLOTS) return (int)cudaErrorInvalidValue;
    cudaError_t e = id_setup();
    if (e != cudaSuccess) return (int)e;
    *d_ptr = id_dev + slot;
    return 0;
}

extern "C" int wick_id_post(int slot) {
    if (slot < 0 || slot >= ID_SLOTS || !id_host) return (int)cudaErrorInvalidValue;
    return (int)cudaEventRecord(id_done[slot], wick_stream);
}

extern "C" int wick_id_take(int slot, int32_t *id) {
    if (slot < 0 || slot >= ID_SLOTS || !id_host) return (int)cudaErrorInvalidValue;
    cudaError_t e = cudaEventSynchronize(id_done[slot]);
    if (e != cudaSuccess) return (int)e;
    *id = *(volatile int *)(id_host + slot);
    return 0;
}
