// Host emulation of wick_matvec_q8 (see run.sh): runs the real kernel source, every launch
// variant, against a double-precision product, and checks that each row of a batch is
// bitwise the row computed alone (what speculative verification relies on); and the norm
// folded into a product (wick_mv_fold) on both sides of it (fold_case).
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
                               xd.data() + (size_t)b0 * n_units, nb, acc, nullptr);
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

// A norm folded into a product and the product after it: a producer of TYPE (`rows` of
// `cols`, accumulating into a residual) rounds norm(y) to int8 in its epilogue, then a Q4_0
// consumer of `crows` rows takes it with the sums of squares. Checks the producer's y
// bitwise against the same product unfolded, its int8 output and sums against the host's,
// the consumer against double precision, and every batch row bitwise against the row alone.
template <int TYPE>
static int fold_case(int cols, int rows, int crows) {
    size_t rb = row_bytes(TYPE, cols), crb = row_bytes(T_Q4_0, rows);
    int n_units = cols / 32, groups = rows / 32;
    std::vector<uint8_t> wb(rb * rows + 16), cb(crb * crows + 16);
    uint8_t *w = wb.data() + (16 - (uintptr_t)wb.data() % 16) % 16;
    uint8_t *cw = cb.data() + (16 - (uintptr_t)cb.data() % 16) % 16;
    for (int r = 0; r < rows; r++) random_row<TYPE>(w + r * rb, cols);
    for (int r = 0; r < crows; r++) random_row<T_Q4_0>(cw + r * crb, rows);
    std::vector<int8_t> xq((size_t)MAX_NB * cols);
    std::vector<float> xd((size_t)MAX_NB * n_units), base((size_t)MAX_NB * rows), norm(rows);
    for (auto &v : xq) v = (int8_t)(rng() % 255 - 127);
    for (auto &v : xd) v = 0.001f + (rng() % 1000) / 100000.f;
    for (auto &v : base) v = (rng() % 2000) / 1000.f - 1.f;
    for (auto &v : norm) v = 0.5f + (rng() % 1000) / 1000.f;
    const float eps = 1e-5f;
    struct Out { std::vector<float> y, d, ss, z; std::vector<int8_t> q; };
    // Batch rows [b0, b0 + nb): the producer folded (or not), then the consumer.
    auto run = [&](int b0, int nb, bool folded) {
        Out o;
        o.y.assign(base.begin() + (size_t)b0 * rows, base.begin() + (size_t)(b0 + nb) * rows);
        o.q.assign((size_t)nb * rows, 0);
        o.d.assign((size_t)nb * groups, NAN);
        o.ss.assign((size_t)nb * groups, NAN);
        o.z.assign((size_t)nb * crows, NAN);
        wick_mv_target t = {w, o.y.data(), rows};
        wick_mv_fold f = {nullptr, 0.f, norm.data(), o.q.data(), o.d.data(), o.ss.data()};
        wick_matvec_q8_variant(folded ? 0 : 3);
        int e = wick_matvec_q8(TYPE, &t, 1, cols, xq.data() + (size_t)b0 * cols,
                               xd.data() + (size_t)b0 * n_units, nb, 1, folded ? &f : nullptr);
        if (e) { printf("producer launch error %d\n", e); exit(1); }
        if (folded) {
            wick_mv_target ct = {cw, o.z.data(), crows};
            wick_mv_fold cf = {o.ss.data(), eps, nullptr, nullptr, nullptr, nullptr};
            wick_matvec_q8_variant(0);
            e = wick_matvec_q8(T_Q4_0, &ct, 1, rows, o.q.data(), o.d.data(), nb, 0, &cf);
            if (e) { printf("consumer launch error %d\n", e); exit(1); }
        }
        return o;
    };
    wick_bulk = true;
    int bad = 0;
    auto fail = [&](const char *what, int nb, int b, int i, double got, double want) {
        if (bad++ < 8) printf("  fold %s nb %d batch %d index %d: got %.9g want %.9g\n", what, nb, b, i, got, want);
    };
    if (wick_matvec_fold_applies(TYPE, w, rows, cols) != 1) { printf("fold does not apply\n"); return 1; }
    std::vector<Out> alone(MAX_NB);
    for (int b = 0; b < MAX_NB; b++) alone[b] = run(b, 1, true);
    double maxerr = 0;
    for (int nb : {1, 2, 3, 5, 9, 16, 17}) {
        Out o = run(0, nb, true), plain = run(0, nb, false);
        for (int b = 0; b < nb; b++) {
            const Out &a = alone[b];
            double ss_all = 0;
            for (int g = 0; g < groups; g++) {
                const float *y = &o.y[(size_t)b * rows + g * 32];
                float amax = 0, u[32];
                double ss = 0;
                for (int l = 0; l < 32; l++) {
                    u[l] = y[l] * norm[g * 32 + l];
                    amax = fmaxf(amax, fabsf(u[l]));
                    ss += (double)y[l] * y[l];
                }
                float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
                size_t k = (size_t)b * groups + g;
                if (o.d[k] != d) fail("scale", nb, b, g, o.d[k], d);
                if (fabs(o.ss[k] - ss) > 1e-5 * ss) fail("sum of squares", nb, b, g, o.ss[k], ss);
                if (memcmp(&o.d[k], &a.d[g], 4) || memcmp(&o.ss[k], &a.ss[g], 4)) fail("scale or sum alone", nb, b, g, o.ss[k], a.ss[g]);
                for (int l = 0; l < 32; l++) {
                    int8_t q = (int8_t)roundf(u[l] * id);
                    size_t i = (size_t)b * rows + g * 32 + l;
                    if (o.q[i] != q) fail("int8", nb, b, g * 32 + l, o.q[i], q);
                    if (o.q[i] != a.q[g * 32 + l]) fail("int8 alone", nb, b, g * 32 + l, o.q[i], a.q[g * 32 + l]);
                }
                ss_all += o.ss[k];
            }
            for (int r = 0; r < rows; r++) {
                size_t i = (size_t)b * rows + r;
                if (memcmp(&o.y[i], &plain.y[i], 4)) fail("y against unfolded", nb, b, r, o.y[i], plain.y[i]);
                if (memcmp(&o.y[i], &a.y[r], 4)) fail("y alone", nb, b, r, o.y[i], a.y[r]);
            }
            // The consumer: its dot products of the folded int8, times 1 / rms.
            double rms = 1 / sqrt(ss_all / rows + eps);
            std::vector<float> cwf(rows);
            for (int r = 0; r < crows; r++) {
                for (int u = 0; u < groups; u++) dequant_block<T_Q4_0>(cw + r * crb, u, &cwf[32 * u]);
                double want = 0, mag = 0;
                for (int k = 0; k < rows; k++) {
                    double p = (double)cwf[k] * o.q[(size_t)b * rows + k] * o.d[(size_t)b * groups + k / 32];
                    want += p;
                    mag += fabs(p);
                }
                want *= rms;
                mag *= rms;
                size_t i = (size_t)b * crows + r;
                double err = fabs(o.z[i] - want) / (mag + 1e-6);
                if (!(err < 1e-5)) fail("consumer", nb, b, r, o.z[i], want);
                if (err > maxerr || err != err) maxerr = err;
                if (memcmp(&o.z[i], &a.z[r], 4)) fail("consumer alone", nb, b, r, o.z[i], a.z[r]);
            }
        }
    }
    printf("fold: type %d cols %d rows %d, consumer rows %d: max rel err %.2e, %d bad\n", TYPE,
           cols, rows, crows, maxerr, bad);
    fflush(stdout);
    return bad > 0;
}

int main(int argc, char **argv) {
    int which = argc > 1 ? atoi(argv[1]) : -1;
    quick = argc > 2 && strcmp(argv[2], "quick") == 0;
    // "fold": only the folded norm's cases.
    bool fold_only = argc > 2 && strcmp(argv[2], "fold") == 0;
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
        if ((which >= 0 && which != ti) || fold_only) continue;
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
    if (!quick) {
        // The fold's own cases (no K-quants: they do not fold): several blocks of rows and
        // a ring that wraps (Q4_0), one block (Q4_1).
        if (which < 0 || which == 0) fails += fold_case<T_Q4_0>(2048, 256, 40);
        if (which < 0 || which == 1) fails += fold_case<T_Q4_1>(2048, 32, 9);
        if (which < 0 || which == 2) fails += fold_case<T_Q8_0>(1280, 96, 33);
    }
    printf("%d failed\n", fails);
    return fails != 0;
}
