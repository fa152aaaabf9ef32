// Host emulation of wick_matvec_q8 (see run.sh): runs the real kernel source, every launch
// variant, against a double-precision product, and checks that each row of a batch is
// bitwise the row computed alone (what speculative verification relies on).
#include <cuda_runtime.h>
#include <thread>
#include <vector>
#include <random>
struct EmuCfg { dim3 grid; dim3 block; size_t smem; };
inline EmuCfg emu_cfg(dim3 g, dim3 b, size_t smem = 0, void * = nullptr) { return {g, b, smem}; }
template <class K, class... A> void emu_run(K kernel, EmuCfg c, A... args);
#include "matvec_q8.cu"

#include "emu_host.h"

constexpr int MAX_NB = 17;
// Streaming variants must agree with each other bitwise, with cp.async or bulk copies (the
// second of each pair: 1 = wick_bulk); 1 (the direct kernel) only up to rounding, since it
// groups each unit's sums differently.
constexpr int VARIANTS[][2] = {{0, 1}, {0, 0}, {2, 1}, {3, 1}, {3, 0}, {4, 1}, {5, 0}, {1, 0}};

// "quick" (second argument): the long rows, the ring depths 8 and 4, two batch sizes;
// for checking that a deliberately broken kernel fails.
static bool quick = false;

struct Case {
    int type, cols, n_targets, rows[3], misalign;
};

template <int TYPE>
static int run_case(const Case &c) {
    size_t rb = row_bytes(TYPE, c.cols);
    int n_units = c.cols / 32;
    // Weights: one buffer per target, 16-byte aligned as cudaMalloc's (plus `misalign`).
    std::vector<std::vector<uint8_t>> wbuf(c.n_targets);
    std::vector<const uint8_t *> w(c.n_targets);
    for (int i = 0; i < c.n_targets; i++) {
        wbuf[i].resize(rb * c.rows[i] + 32);
        uint8_t *p = wbuf[i].data();
        p += (16 - (uintptr_t)p % 16) % 16 + c.misalign;
        for (int r = 0; r < c.rows[i]; r++) random_row<TYPE>(p + r * rb, c.cols);
        w[i] = p;
    }
    std::vector<int8_t> xq((size_t)MAX_NB * c.cols);
    std::vector<float> xd((size_t)MAX_NB * n_units);
    for (auto &v : xq) v = (int8_t)(rng() % 255 - 127);
    for (auto &v : xd) v = 0.001f + (rng() % 1000) / 100000.f;
    // Reference: decoded weights times decoded activations, in double.
    std::vector<std::vector<double>> want(c.n_targets), mag(c.n_targets);
    for (int i = 0; i < c.n_targets; i++) {
        want[i].assign((size_t)MAX_NB * c.rows[i], 0);
        mag[i].assign(want[i].size(), 0);
        std::vector<float> wf(c.cols);
        for (int r = 0; r < c.rows[i]; r++) {
            for (int u = 0; u < n_units; u++) dequant_block<TYPE>(w[i] + r * rb, u, &wf[32 * u]);
            for (int b = 0; b < MAX_NB; b++)
                for (int k = 0; k < c.cols; k++) {
                    double p = (double)wf[k] * xq[(size_t)b * c.cols + k] * xd[(size_t)b * n_units + k / 32];
                    want[i][(size_t)b * c.rows[i] + r] += p;
                    mag[i][(size_t)b * c.rows[i] + r] += fabs(p);
                }
        }
    }
    std::vector<float> base((size_t)MAX_NB * 4096);
    for (auto &v : base) v = (rng() % 2000) / 1000.f - 1.f;
    // Runs rows [b0, b0 + nb) of the activations; y[i] gets target i's nb x rows results.
    auto run = [&](int variant, int b0, int nb, bool acc, std::vector<std::vector<float>> &y) {
        wick_mv_target t[3];
        y.assign(c.n_targets, {});
        for (int i = 0; i < c.n_targets; i++) {
            y[i].assign((size_t)nb * c.rows[i] + 1, NAN);
            if (acc) std::copy(base.begin(), base.begin() + y[i].size() - 1, y[i].begin());
            t[i] = {w[i], y[i].data(), c.rows[i]};
        }
        wick_matvec_q8_variant(variant);
        int e = wick_matvec_q8(TYPE, t, c.n_targets, c.cols, xq.data() + (size_t)b0 * c.cols,
                               xd.data() + (size_t)b0 * n_units, nb, acc);
        if (e) { printf("launch error %d\n", e); exit(1); }
        for (int i = 0; i < c.n_targets; i++)
            if (!std::isnan(y[i].back())) { printf("write past the end of y\n"); exit(1); }
    };
    int bad = 0;
    double maxerr = 0;
    // Each activation row alone, with the default variant: the bitwise reference.
    std::vector<std::vector<std::vector<float>>> alone(MAX_NB);
    wick_bulk = false;
    for (int b = 0; b < (quick ? 5 : MAX_NB); b++) run(0, b, 1, false, alone[b]);
    for (const auto &vb : VARIANTS) {
        int variant = vb[0], bulk = vb[1];
        if (quick && variant != 0 && variant != 5) continue;
        wick_bulk = bulk;
        bool exact = variant != 1;
        for (int nb : {1, 2, 3, 5, 8, 9, 16, 17}) {
            if (quick && nb != 1 && nb != 5) continue;
            for (bool acc : {false, true}) {
                if (acc && nb != 5) continue;
                std::vector<std::vector<float>> y;
                run(variant, 0, nb, acc, y);
                for (int i = 0; i < c.n_targets; i++)
                    for (int b = 0; b < nb; b++)
                        for (int r = 0; r < c.rows[i]; r++) {
                            size_t k = (size_t)b * c.rows[i] + r;
                            double s = want[i][k] + (acc ? base[k] : 0);
                            float got = y[i][k];
                            double err = fabs(got - s) / (mag[i][k] + 1e-6);
                            if (!(err < 1e-5) && bad++ < 5)
                                printf("  variant %d bulk %d nb %d acc %d target %d row %d batch %d: got %g want %g\n",
                                       variant, bulk, nb, acc, i, r, b, got, s);
                            if (err > maxerr || err != err) maxerr = err;
                            float one = alone[b][i][r];
                            if (acc) one = base[k] + one;
                            bool same = acc ? true : memcmp(&got, &one, 4) == 0;
                            if (exact && !same && bad++ < 5)
                                printf("  variant %d bulk %d nb %d target %d row %d batch %d: %.9g, alone %.9g\n",
                                       variant, bulk, nb, i, r, b, got, one);
                        }
            }
        }
    }
    printf("type %d cols %d rows %d/%d/%d misalign %d: max rel err %.2e, %d bad\n", TYPE, c.cols,
           c.rows[0], c.n_targets > 1 ? c.rows[1] : 0, c.n_targets > 2 ? c.rows[2] : 0,
           c.misalign, maxerr, bad);
    fflush(stdout);
    return bad > 0;
}

int main(int argc, char **argv) {
    int which = argc > 1 ? atoi(argv[1]) : -1;
    quick = argc > 2 && strcmp(argv[2], "quick") == 0;
    int fails = 0;
    const int types[] = {T_Q4_0, T_Q4_1, T_Q8_0, T_Q4_K, T_Q6_K, T_Q5_K, T_Q5_0, T_Q5_1};
    const Case cases[] = {
        // Three targets, odd row counts; 40 units: a whole step and a partial one.
        {0, 1280, 3, {77, 33, 5}, 0},
        // 14 steps (Q6_K: 7): the rings wrap around.
        {0, 14336, 2, {5, 9, 0}, 0},
        // Two full steps (Q6_K: one), one target with fewer rows than a block.
        {0, 2048, 1, {3, 0, 0}, 0},
        // Rows that are not whole 16-byte pieces, and misaligned weights: the direct kernel.
        {0, 288, 2, {9, 40, 0}, 0},
        {0, 512, 1, {21, 0, 0}, 2},
    };
    for (int ti = 0; ti < 8; ti++) {
        if (which >= 0 && which != ti) continue;
        for (Case c : cases) {
            if (quick && c.cols != 14336) continue;
            c.type = types[ti];
            if (c.cols % block_elems(c.type) != 0) continue;
            // Q4_1, Q4_K and Q5_K blocks are read with 4- and 16-byte loads: never misaligned.
            if (c.misalign && (c.type == T_Q4_1 || c.type == T_Q4_K || c.type == T_Q5_K)) continue;
            switch (c.type) {
                case T_Q4_0: fails += run_case<T_Q4_0>(c); break;
                case T_Q4_1: fails += run_case<T_Q4_1>(c); break;
                case T_Q8_0: fails += run_case<T_Q8_0>(c); break;
                case T_Q4_K: fails += run_case<T_Q4_K>(c); break;
                case T_Q6_K: fails += run_case<T_Q6_K>(c); break;
                case T_Q5_K: fails += run_case<T_Q5_K>(c); break;
                case T_Q5_0: fails += run_case<T_Q5_0>(c); break;
                case T_Q5_1: fails += run_case<T_Q5_1>(c); break;
            }
        }
    }
    printf("%d failed\n", fails);
    return fails != 0;
}
