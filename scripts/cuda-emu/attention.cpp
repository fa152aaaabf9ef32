// Host emulation of single-row attention (see run-attention.sh): runs the split kernel of
// attention_split.cuh and the former one-block-per-head kernel of attention.cu, one host
// thread per GPU thread, over random f16, Q8_0 and fp8 caches, and checks them against
// double-precision attention over the decoded rows; rows of one launch must equal, bit for
// bit, the same rows launched alone.
#include <cuda_runtime.h>
#include <random>
#include <thread>
#include <vector>
using std::max;
using std::min;
struct EmuCfg { dim3 grid; dim3 block; size_t smem; };
inline EmuCfg emu_cfg(dim3 g, dim3 b, size_t smem = 0, void * = nullptr) { return {g, b, smem}; }
template <class K, class... A> void emu_run(K kernel, EmuCfg c, A... args);
#include "mma_s8.cuh"
// A block's shared arrays: one copy for all its threads (blocks run one after another).
#undef __shared__
#define __shared__ static
#include "attention.cu"
#undef __shared__
#define __shared__

thread_local uint3 threadIdx;
uint3 blockIdx;
dim3 gridDim, blockDim;
size_t emu_smem_optin = 227 * 1024;
cudaStream_t wick_stream = nullptr;
EmuWarp emu_warps[32];
thread_local std::vector<EmuCopy> emu_pending;
thread_local std::vector<std::vector<EmuCopy>> emu_groups;
thread_local std::mt19937 emu_rng;
uint8_t *emu_smem_lo, *emu_smem_hi;
static std::barrier<> *block_bar;
void __syncthreads() { block_bar->arrive_and_wait(); }

// The tiled kernel is not under test: multi-row launches here go to the single-row ones.
bool attention_tiled_fits(int, const void *, const void *, int, int, int) { return false; }
int attention_tiled(int, const float *, const void *, const void *, const int32_t *,
                    const int32_t *, int, int, int, int, int, int, int, float *) { return 1; }

// One host thread per GPU thread of a block, kept for the whole grid: blocks run one after
// another, thread 0 naming the next between two barriers.
template <class K, class... A> void emu_run(K kernel, EmuCfg c, A... args) {
    gridDim = c.grid; blockDim = c.block;
    int nt = c.block.x;
    for (int w = 0; w < (nt + 31) / 32; w++) emu_warps[w].bar = new std::barrier<>(32);
    block_bar = new std::barrier<>(nt);
    std::barrier<> next(nt);
    std::vector<std::thread> th;
    for (int i = 0; i < nt; i++)
        th.emplace_back([&, i] {
            threadIdx = {(unsigned)i, 0, 0};
            for (unsigned z = 0; z < c.grid.z; z++)
                for (unsigned y = 0; y < c.grid.y; y++)
                    for (unsigned x = 0; x < c.grid.x; x++) {
                        if (i == 0) blockIdx = {x, y, z};
                        next.arrive_and_wait();
                        kernel(args...);
                        next.arrive_and_wait();
                    }
        });
    for (auto &t : th) t.join();
    for (int w = 0; w < (nt + 31) / 32; w++) delete emu_warps[w].bar;
    delete block_bar;
}

static std::mt19937 rng(4242);
static float uni(float lo, float hi) { return lo + (hi - lo) * (float)(rng() % 1000000) / 1e6f; }

// Value e of a stored row, decoded independently of kv.cuh.
static double decode(int type, const uint8_t *row, int e) {
    if (type == T_Q8_0) {
        const uint8_t *blk = row + (e / 32) * 34;
        uint16_t d;
        memcpy(&d, blk, 2);
        return (double)__half2float(__half(d)) * (int8_t)blk[2 + e % 32];
    }
    if (type == T_FP8) {
        float s;
        memcpy(&s, row, 4);
        return (double)emu_fp8_to_float(row[4 + e]) * s;
    }
    uint16_t h;
    memcpy(&h, row + 2 * e, 2);
    return __half2float(__half(h));
}

static void random_row(int type, uint8_t *row, int kv_dim) {
    if (type == T_Q8_0) {
        for (int b = 0; b < kv_dim / 32; b++) {
            uint16_t d = __float2half(uni(0.002f, 0.02f)).x;
            memcpy(row + 34 * b, &d, 2);
            for (int i = 0; i < 32; i++) row[34 * b + 2 + i] = (uint8_t)(int8_t)(rng() % 255 - 127);
        }
    } else if (type == T_FP8) {
        float s = std::ldexp(1.f, -(int)(rng() % 4) - 3);
        memcpy(row, &s, 4);
        for (int i = 0; i < kv_dim; i++) {
            uint8_t b;
            do b = (uint8_t)rng(); while ((b & 0x7f) == 0x7f);
            row[4 + i] = b;
        }
    } else {
        for (int i = 0; i < kv_dim; i++) {
            uint16_t h = __float2half(uni(-1.f, 1.f)).x;
            memcpy(row + 2 * i, &h, 2);
        }
    }
}

// The unnormalized Walsh-Hadamard transform of every n-chunk (src/kv/rotate.rs).
static void hadamard(double *x, int len, int n) {
    for (int c = 0; c + n <= len; c += n)
        for (int m = 1; m < n; m *= 2)
            for (int i = 0; i < n; i++)
                if (!(i & m)) {
                    double a = x[c + i], b = x[c + i + m];
                    x[c + i] = a + b;
                    x[c + i + m] = a - b;
                }
}

struct Case {
    int type, n_heads, n_kv, hd, capacity, keep, window, offset, floor, pos0, rows;
};

static const char *tname(int t) { return t == T_Q8_0 ? "q8_0" : t == T_FP8 ? "fp8" : "f16"; }

static int run(const Case &c, bool with_old) {
    int kv_dim = c.n_kv * c.hd, qd = c.n_heads * c.hd;
    size_t rb = kv_row_bytes(c.type, kv_dim);
    std::vector<uint8_t> kc(rb * c.capacity), vc(rb * c.capacity);
    for (int s = 0; s < c.capacity; s++) {
        random_row(c.type, &kc[rb * s], kv_dim);
        random_row(c.type, &vc[rb * s], kv_dim);
    }
    std::vector<float> q((size_t)c.rows * qd);
    for (auto &x : q) x = uni(-2.f, 2.f);
    int32_t state[2] = {c.offset, c.floor};
    int rot = kv_rot_chunk(c.type, c.hd);

    // Reference: layout.rs's `live` and `slot`, written out again.
    std::vector<double> want((size_t)c.rows * qd);
    for (int b = 0; b < c.rows; b++) {
        int p = c.pos0 + b;
        std::vector<int> live;
        if (c.window > 0) {
            for (int t = max(max(p + 1 - c.window, 0), c.floor); t <= p; t++) live.push_back(t);
        } else {
            int sinks = min(c.keep, p + 1), ring = c.capacity - c.keep;
            for (int t = 0; t < sinks; t++) live.push_back(t);
            for (int t = max(sinks, p + 1 - ring); t <= p; t++) live.push_back(t);
        }
        for (int h = 0; h < c.n_heads; h++) {
            int kvh = h / (c.n_heads / c.n_kv);
            std::vector<double> qh(c.hd), o(c.hd, 0.0), sc;
            for (int d = 0; d < c.hd; d++) qh[d] = q[(size_t)b * qd + h * c.hd + d];
            if (rot > 1) hadamard(qh.data(), c.hd, rot);
            double mx = -1e300;
            for (int t : live) {
                int slot = t < c.keep ? t : c.keep + (int)(((long long)(t - c.keep) + c.offset) % (c.capacity - c.keep));
                double s = 0;
                for (int d = 0; d < c.hd; d++) s += qh[d] * decode(c.type, &kc[rb * slot], kvh * c.hd + d);
                sc.push_back(s / std::sqrt((double)c.hd));
                mx = std::max(mx, sc.back());
            }
            double tot = 0;
            for (size_t i = 0; i < live.size(); i++) {
                int t = live[i];
                int slot = t < c.keep ? t : c.keep + (int)(((long long)(t - c.keep) + c.offset) % (c.capacity - c.keep));
                double w = std::exp(sc[i] - mx);
                tot += w;
                for (int d = 0; d < c.hd; d++) o[d] += w * decode(c.type, &vc[rb * slot], kvh * c.hd + d);
            }
            for (auto &x : o) x /= tot;
            if (rot > 1) hadamard(o.data(), c.hd, rot);
            for (int d = 0; d < c.hd; d++) want[(size_t)b * qd + h * c.hd + d] = o[d];
        }
    }

    std::vector<float> scratch(1 << 22);
    std::vector<int8_t> xq((size_t)c.rows * qd);
    std::vector<float> xd((size_t)c.rows * qd / 32 + 1);
    int rounded = 0;
    auto launch = [&](int pos0, const float *qp, int rows, size_t scratch_floats, bool old) {
        std::vector<float> out((size_t)rows * qd, NAN);
        for (auto &x : scratch) x = NAN;
        wick_attention_decode(old ? 1 : 0, 0);
        int e = wick_attention(c.type, qp, kc.data(), vc.data(), &pos0, state, rows, c.n_heads,
                               c.n_kv, c.hd, c.capacity, c.keep, c.window, out.data(),
                               scratch.data(), scratch_floats, xq.data(), xd.data(), &rounded);
        if (e) { printf("  launch error %d\n", e); exit(1); }
        return out;
    };
    auto err = [&](const std::vector<float> &got) {
        // Per head: the largest error over the largest reference value.
        double worst = 0;
        for (int b = 0; b < c.rows; b++)
            for (int h = 0; h < c.n_heads; h++) {
                size_t o = (size_t)b * qd + h * c.hd;
                double mag = 1e-30, e = 0;
                for (int d = 0; d < c.hd; d++) mag = std::max(mag, std::fabs(want[o + d]));
                for (int d = 0; d < c.hd; d++) {
                    double x = std::fabs(got[o + d] - want[o + d]);
                    e = std::max(e, x == x ? x : INFINITY);
                }
                worst = std::max(worst, e / mag);
            }
        return worst;
    };
    int fails = 0;
    size_t full = 1 << 22;
    std::fill(xq.begin(), xq.end(), (int8_t)99);
    std::vector<float> got = launch(c.pos0, q.data(), c.rows, full, false);
    double e_new = err(got);
    // Heads of whole int8 blocks also come out rounded, as the quantize kernel rounds.
    int bad_q8 = 0;
    if (rounded != (c.hd % 32 == 0)) bad_q8++;
    if (rounded)
        for (size_t blk = 0; blk < got.size() / 32; blk++) {
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = std::max(amax, std::fabs(got[blk * 32 + i]));
            float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
            bad_q8 += xd[blk] != __half2float(__float2half(d));
            for (int i = 0; i < 32; i++) bad_q8 += xq[blk * 32 + i] != (int8_t)roundf(got[blk * 32 + i] * id);
        }
    fails += bad_q8 > 0;
    int splits = attention_splits(c.n_heads, c.n_kv, c.hd, full);
    // f32 sums of a thousand terms: a few 1e-7 of the head's largest output (fp8 rows span
    // a wider range than the output they average to, 2.4e-6 seen); a wrong slot or slice
    // costs far more.
    if (!(e_new < 1e-5)) fails++;
    // Each row alone, and the rows in launches of two (a scratch too small for more): the
    // very same bits.
    int differ = 0;
    for (int b = 0; b < c.rows && c.rows > 1; b++) {
        std::vector<float> one = launch(c.pos0 + b, &q[(size_t)b * qd], 1, full, false);
        differ += memcmp(one.data(), &got[(size_t)b * qd], qd * 4) != 0;
    }
    if (c.rows > 2) {
        size_t two = 2 * attention_split_row_floats(c.n_heads, c.hd, splits);
        std::vector<float> pairs = launch(c.pos0, q.data(), c.rows, two, false);
        differ += memcmp(pairs.data(), got.data(), got.size() * 4) != 0;
    }
    fails += differ > 0;
    printf("%-4s %2d/%dx%-3d cap %4d keep %d window %4d offset %4d floor %4d pos %4d rows %d: "
           "splits %3d, max err %.1e, %d rows differ from single launches, int8 %s",
           tname(c.type), c.n_heads, c.n_kv, c.hd, c.capacity, c.keep, c.window, c.offset,
           c.floor, c.pos0, c.rows, splits, e_new, differ,
           !rounded ? "-" : bad_q8 ? "WRONG" : "ok");
    if (with_old) printf(", old kernel %.1e", err(launch(c.pos0, q.data(), c.rows, full, true)));
    printf("%s\n", fails ? "  FAIL" : "");
    fflush(stdout);
    return fails;
}

int main(int argc, char **argv) {
    // "old": the former kernel's error too; any other first argument: only the split one.
    bool old = argc > 1 && !strcmp(argv[1], "old");
    std::vector<Case> cases = {
        // SmolLM2's shape at 1,000 and 4,000 live positions; llama3-8b's.
        {T_F16, 9, 3, 64, 1024, 4, 0, 0, 0, 999, 1},
        {T_F16, 9, 3, 64, 4096, 4, 0, 0, 0, 3998, 2},
        {T_F16, 32, 8, 128, 4096, 4, 0, 0, 0, 3999, 1},
        // A short context: most slices empty.
        {T_F16, 9, 3, 64, 256, 4, 0, 0, 0, 0, 3},
        {T_F16, 32, 8, 128, 256, 4, 0, 0, 0, 20, 2},
        // stories260K's heads of 8, the ring full and shifted (sinks, then a wrapped ring).
        {T_F16, 8, 4, 8, 512, 4, 0, 37, 0, 1500, 3},
        // Sliding windows whose ring wraps, one with a floor above the window's start.
        {T_F16, 9, 3, 64, 1064, 0, 1000, 0, 0, 2500, 2},
        {T_F16, 8, 2, 64, 84, 0, 20, 0, 0, 1001, 3},
        {T_F16, 8, 2, 64, 84, 0, 20, 0, 995, 1001, 1},
        // Odd heads: 40 and 96 wide (lanes past the head), a group of 12 (two blocks per KV
        // head), one KV head.
        {T_F16, 5, 1, 40, 300, 4, 0, 11, 0, 1000, 2},
        {T_F16, 6, 6, 96, 1200, 4, 0, 0, 0, 1111, 1},
        {T_F16, 24, 2, 64, 1100, 4, 0, 0, 0, 1049, 1},
        {T_F16, 16, 2, 256, 1100, 4, 0, 0, 0, 1000, 1},
        // Q8_0 (rotated rows: chunks of 32, and 8 for heads of 8) and fp8.
        {T_Q8_0, 9, 3, 64, 1024, 4, 0, 0, 0, 999, 2},
        {T_Q8_0, 8, 4, 8, 512, 4, 0, 5, 0, 700, 1},
        {T_Q8_0, 16, 2, 256, 1100, 4, 0, 0, 0, 1000, 1},
        {T_Q8_0, 6, 6, 96, 1200, 4, 0, 3, 0, 2000, 1},
        {T_Q8_0, 8, 2, 64, 84, 0, 20, 0, 0, 1001, 2},
        {T_FP8, 32, 8, 128, 4096, 4, 0, 0, 0, 3999, 1},
        {T_FP8, 24, 2, 64, 1100, 4, 0, 0, 0, 1049, 2},
        {T_FP8, 8, 4, 8, 512, 4, 0, 37, 0, 1500, 1},
        {T_FP8, 9, 3, 64, 1064, 0, 1000, 0, 0, 2500, 1},
    };
    // A case index: that case; with a trailing '-', that case and those after it.
    int which = argc > 2 ? atoi(argv[2]) : 0, fails = 0;
    bool on = argc > 2 && argv[2][strlen(argv[2]) - 1] == '-';
    for (size_t i = 0; i < cases.size(); i++)
        if (argc <= 2 || which == (int)i || (on && (int)i >= which)) fails += run(cases[i], old);
    printf("%d failed\n", fails);
    return fails != 0;
}
