// The host side of the emulation, shared by the harnesses (harness.cpp, matvec.cpp): the
// launch (every GPU thread a host thread, blocks one after another), the globals the
// emulated headers declare, and random GGUF rows. Included once, after the kernel source.
#pragma once
thread_local uint3 threadIdx;
uint3 blockIdx;
dim3 gridDim, blockDim;
size_t emu_smem_optin = 227 * 1024;
cudaStream_t wick_stream = nullptr;
bool wick_early = true;
bool wick_bulk = false;
EmuWarp emu_warps[32];
thread_local std::vector<EmuCopy> emu_pending;
thread_local std::vector<std::vector<EmuCopy>> emu_groups;
thread_local std::mt19937 emu_rng;
uint8_t *emu_smem_lo, *emu_smem_hi;
static std::barrier<> *block_bar;
void __syncthreads() { block_bar->arrive_and_wait(); }
// The kernels' `extern __shared__ ... smem[]` (they sit in anonymous namespaces): one
// block runs at a time.
namespace {
alignas(16) uint8_t smem[256 * 1024];
}
static std::mt19937 rng(12345);

template <class K, class... A> void emu_run(K kernel, EmuCfg c, A... args) {
    gridDim = c.grid; blockDim = c.block;
    int nt = c.block.x;
    std::vector<std::barrier<> *> wb;
    for (int w = 0; w < nt / 32; w++) emu_warps[w].bar = new std::barrier<>(32);
    block_bar = new std::barrier<>(nt);
    emu_smem_lo = smem; emu_smem_hi = smem + c.smem;
    for (unsigned z = 0; z < c.grid.z; z++)
        for (unsigned y = 0; y < c.grid.y; y++)
            for (unsigned x = 0; x < c.grid.x; x++) {
                blockIdx = {x, y, z};
                for (size_t i = 0; i < c.smem; i++) smem[i] = (uint8_t)rng();
                std::vector<std::thread> th;
                unsigned seed = rng();
                for (int i = 0; i < nt; i++)
                    th.emplace_back([&, i] {
                        threadIdx = {(unsigned)i, 0, 0};
                        emu_rng.seed(seed + i);
                        emu_groups.clear(); emu_pending.clear();
                        kernel(args...);
                        if (!emu_groups.empty() || !emu_pending.empty()) { fprintf(stderr, "copies left in flight\n"); abort(); }
                    });
                for (auto &t : th) t.join();
            }
    for (int w = 0; w < nt / 32; w++) delete emu_warps[w].bar;
    delete block_bar;
}

static uint16_t rand_half(float lo, float hi) {
    // A random f16 in [lo, hi) (positive normals), by bisection on the bit pattern.
    float v = lo + (hi - lo) * (rng() % 10000) / 10000.f;
    uint16_t best = 0; float bd = 1e9;
    for (uint32_t b = 0x0400; b < 0x7c00; b += 1) {
        float f = __half2float(__half{(uint16_t)b});
        if (fabsf(f - v) < bd) { bd = fabsf(f - v); best = b; }
    }
    return best;
}

template <int TYPE>
static void random_row(uint8_t *row, int cols) {
    size_t rb = row_bytes(TYPE, cols);
    for (size_t i = 0; i < rb; i++) row[i] = (uint8_t)rng();
    int bb = block_bytes(TYPE), n = cols / block_elems(TYPE);
    static uint16_t halves[64];
    static bool init = false;
    if (!init) { for (auto &h : halves) h = rand_half(0.001f, 0.05f); init = true; }
    for (int b = 0; b < n; b++) {
        uint8_t *p = row + (size_t)b * bb;
        auto put = [&](int off) { uint16_t h = halves[rng() % 64]; memcpy(p + off, &h, 2); };
        if (TYPE == T_Q4_0 || TYPE == T_Q5_0 || TYPE == T_Q8_0) put(0);
        else if (TYPE == T_Q4_1 || TYPE == T_Q5_1 || TYPE == T_Q4_K || TYPE == T_Q5_K) { put(0); put(2); }
        else if (TYPE == T_Q6_K) put(208);
    }
}

