// Host emulation of wick_gemm_q8 (see run.sh): runs the real kernel source with one host
// thread per GPU thread and checks it against a double-precision product.
#include <cuda_runtime.h>
#include <thread>
#include <vector>
#include <random>
#include <sanitizer/asan_interface.h>
struct EmuCfg { dim3 grid; dim3 block; size_t smem; };
inline EmuCfg emu_cfg(dim3 g, dim3 b, size_t smem = 0, void * = nullptr) { return {g, b, smem}; }
template <class K, class... A> void emu_run(K kernel, EmuCfg c, A... args);
#include "gemm_q8.cu"
#include "gemm_f16.cu"

#include "emu_host.h"

constexpr int F16 = 100;

template <int TYPE>
static int check(int rows, int cols, int nb, int variant, bool accumulate, int misalign) {
    size_t rb = row_bytes(TYPE, cols);
    std::vector<uint8_t> wbuf(rb * rows + misalign);
    uint8_t *w = wbuf.data() + misalign;
    for (int r = 0; r < rows; r++) random_row<TYPE>(w + r * rb, cols);
    int n_units = cols / 32;
    std::vector<int8_t> xq((size_t)nb * cols);
    std::vector<float> xd((size_t)nb * n_units);
    for (auto &v : xq) v = (int8_t)(rng() % 255 - 127);
    for (auto &v : xd) v = 0.001f + (rng() % 1000) / 100000.f;
    std::vector<float> y((size_t)nb * rows), base(y.size());
    for (auto &v : base) v = (rng() % 2000) / 1000.f - 1.f;
    if (accumulate) y = base;
    else std::fill(y.begin(), y.end(), NAN);
    std::vector<float> ws(1 << 20, NAN);
    // Variant F16: wick_q8_to_f16, then wick_gemm_f16 (values rounded to f16: a looser bound).
    const bool f16 = variant == F16 || variant == F16 + 8;
    wick_gemm_f16_warps(variant == F16 + 8 ? 8 : 4);
    if (f16 && !wick_gemm_f16_applies(TYPE, w, cols, nb)) {
        printf("type %d %dx%d nb %d misalign %d: not for the f16 kernel\n", TYPE, rows, cols, nb, misalign);
        return 0;
    }
    std::vector<__half> xh((size_t)nb * cols);
    int e;
    if (f16) {
        e = wick_q8_to_f16(xq.data(), xd.data(), nb * cols, xh.data());
        wick_mv_target tg = {w, y.data(), rows};
        if (!e) e = wick_gemm_f16(TYPE, &tg, 1, cols, xh.data(), nb, accumulate, ws.data(), ws.size());
    } else {
        wick_gemm_q8_variant(variant);
        e = wick_gemm_q8(TYPE, w, rows, cols, xq.data(), xd.data(), nb, y.data(), accumulate,
                         ws.data(), ws.size());
    }
    if (e) { printf("launch error %d\n", e); return 1; }
    // Reference: decoded weights times decoded activations, in double.
    std::vector<float> wf((size_t)rows * cols);
    for (int r = 0; r < rows; r++)
        for (int u = 0; u < n_units; u++) dequant_block<TYPE>(w + r * rb, u, &wf[(size_t)r * cols + 32 * u]);
    double maxerr = 0; int bad = 0;
    for (int tkn = 0; tkn < nb; tkn++)
        for (int r = 0; r < rows; r++) {
            double s = 0, mag = 0;
            for (int k = 0; k < cols; k++) {
                double p = (double)wf[(size_t)r * cols + k] * xq[(size_t)tkn * cols + k] * xd[(size_t)tkn * n_units + k / 32];
                s += p; mag += fabs(p);
            }
            if (accumulate) s += base[(size_t)tkn * rows + r];
            double got = y[(size_t)tkn * rows + r];
            double err = fabs(got - s) / (mag + 1e-6);
            if (!(err < (f16 ? 2e-3 : 1e-5))) { if (bad++ < 5) printf("  mismatch tok %d row %d: got %g want %g\n", tkn, r, got, s); }
            if (err > maxerr || err != err) maxerr = err;
        }
    printf("type %d %dx%d nb %d variant %d acc %d misalign %d: max rel err %.2e, %d bad\n", TYPE, rows, cols,
           nb, variant, accumulate, misalign, maxerr, bad);
    fflush(stdout);
    return bad > 0;
}

// wick_gemm_f16 over three weights of one type in one launch (their row blocks together
// fill the GPU's 2 x 132 block slots), each against wick_gemm_f16 of that weight alone.
template <int TYPE>
static int check_group(int cols, int nb) {
    const int rows[3] = {4160, 4224, 130};
    size_t rb = row_bytes(TYPE, cols);
    std::vector<uint8_t> wbuf[3];
    std::vector<float> y[3], alone[3];
    wick_mv_target tg[3];
    for (int i = 0; i < 3; i++) {
        wbuf[i].resize(rb * rows[i]);
        for (int r = 0; r < rows[i]; r++) random_row<TYPE>(wbuf[i].data() + r * rb, cols);
        y[i].assign((size_t)nb * rows[i], NAN);
        alone[i].assign((size_t)nb * rows[i], NAN);
        tg[i] = {wbuf[i].data(), y[i].data(), rows[i]};
    }
    std::vector<__half> xh((size_t)nb * cols);
    for (auto &h : xh) h = __float2half((rng() % 2000) / 1000.f - 1.f);
    std::vector<float> ws(1 << 22, NAN);
    int e = wick_gemm_f16(TYPE, tg, 3, cols, xh.data(), nb, 0, ws.data(), ws.size());
    int bad = 0;
    for (int i = 0; i < 3 && !e; i++) {
        wick_mv_target one = {wbuf[i].data(), alone[i].data(), rows[i]};
        e = wick_gemm_f16(TYPE, &one, 1, cols, xh.data(), nb, 0, ws.data(), ws.size());
        for (size_t k = 0; k < y[i].size(); k++)
            if (!(fabsf(y[i][k] - alone[i][k]) <= 1e-4f * (1 + fabsf(alone[i][k])))) bad++;
    }
    printf("type %d group of 3 x %d nb %d: %s, %d differ\n", TYPE, cols, nb, e ? "launch error" : "ran", bad);
    fflush(stdout);
    return e != 0 || bad > 0;
}

int main(int argc, char **argv) {
    int fails = 0;
    int which = argc > 1 ? atoi(argv[1]) : -1;
    auto all = [&](int rows, int cols, int nb, int variant, bool acc, int mis) {
        if (which < 0 || which == 0) fails += check<T_Q4_0>(rows, cols, nb, variant, acc, mis);
        if (which < 0 || which == 1) if (cols % 32 == 0) fails += check<T_Q4_1>(rows, cols, nb, variant, acc, 0);
        if (which < 0 || which == 2) fails += check<T_Q8_0>(rows, cols, nb, variant, acc, mis);
        if (which < 0 || which == 6) fails += check<T_Q5_0>(rows, cols, nb, variant, acc, mis);
        if (which < 0 || which == 7) fails += check<T_Q5_1>(rows, cols, nb, variant, acc, 0);
        if (cols % 256 == 0) {
            if (which < 0 || which == 3) fails += check<T_Q4_K>(rows, cols, nb, variant, acc, 0);
            if (which < 0 || which == 4) fails += check<T_Q6_K>(rows, cols, nb, variant, acc, mis);
            if (which < 0 || which == 5) fails += check<T_Q5_K>(rows, cols, nb, variant, acc, 0);
        }
    };
    // The 64-token kernel, to show the emulation agrees with what passes on the GPU.
    all(70, 512, 40, 0, false, 0);
    // The wide kernel: odd rows, partial stages, partial token tiles, splits, accumulate.
    all(77, 416, 130, 0, false, 0);
    all(65, 2048, 65, 0, true, 0);
    all(130, 768, 257, 0, false, 2);
    all(64, 256, 33, 1, false, 0);
    // The wide2 kernel (variants 3, 4, 5): the same shapes (Q6_K rows of 2048 values are
    // 16-byte aligned: 16-byte copies of unaligned stages); 4-byte aligned Q6_K rows whose
    // stages start 2 bytes past a word (1024 values); 2-byte aligned rows fall back to the
    // wide kernel.
    all(77, 416, 130, 3, false, 0);
    all(65, 2048, 65, 3, true, 0);
    all(130, 768, 257, 3, false, 2);
    all(70, 1024, 200, 3, false, 0);
    all(64, 256, 33, 4, false, 0);
    all(65, 2048, 65, 5, false, 0);
    // The f16 kernel (batches above 64): the same shapes, and 2-byte aligned rows left to
    // the int8 kernels.
    all(77, 416, 130, F16, false, 0);
    all(65, 2048, 65, F16, true, 0);
    all(130, 768, 257, F16, false, 2);
    all(70, 1024, 200, F16, false, 0);
    all(65, 2048, 130, F16, false, 4);
    if (which < 0 || which == 0) fails += check_group<T_Q4_0>(256, 130);
    if (which < 0 || which == 4) fails += check_group<T_Q6_K>(512, 130);
    // With 8 warps per block.
    all(65, 2048, 65, F16 + 8, true, 0);
    all(70, 1024, 200, F16 + 8, false, 0);
    all(65, 2048, 130, F16 + 8, false, 4);
    printf("%d failed\n", fails);
    return fails != 0;
}
