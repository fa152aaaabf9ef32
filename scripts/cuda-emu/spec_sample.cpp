// Host emulation of kernels/cuda/spec_sample.cu (see run-spec-sample.sh): runs the real
// kernel source with one host thread per GPU thread and checks each kernel against a plain
// transcription of the CPU's rules (src/sample `Sampler::probs` and `draw_from`,
// src/spec/accept.rs `Judge::judge`), fed the same seeded random numbers.
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <random>
#include <thread>
#include <utility>
#include <vector>

struct EmuCfg { dim3 grid; dim3 block; size_t smem; };
inline EmuCfg emu_cfg(dim3 g, dim3 b, size_t smem = 0, void * = nullptr) { return {g, b, smem}; }
template <class K, class... A> void emu_run(K kernel, EmuCfg c, A... args);
inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
// One block runs at a time, so a function-level static is the block's shared memory.
#undef __shared__
#define __shared__ static
#include "spec_sample.cu"

thread_local uint3 threadIdx;
uint3 blockIdx;
dim3 gridDim, blockDim;
cudaStream_t wick_stream = nullptr;
static std::barrier<> *block_bar;
void __syncthreads() { block_bar->arrive_and_wait(); }
// Threads per block: the kernels take any block size; fewer threads run faster here and
// give each thread several elements.
static int emu_threads = 64;

template <class K, class... A> void emu_run(K kernel, EmuCfg c, A... args) {
    gridDim = c.grid;
    int nt = std::min<int>(c.block.x, emu_threads);
    blockDim = dim3(nt);
    block_bar = new std::barrier<>(nt);
    for (unsigned x = 0; x < c.grid.x; x++) {
        blockIdx = {x, 0, 0};
        std::vector<std::thread> th;
        for (int i = 0; i < nt; i++)
            th.emplace_back([&, i] {
                threadIdx = {(unsigned)i, 0, 0};
                kernel(args...);
            });
        for (auto &t : th) t.join();
    }
    delete block_bar;
}

// --- the CPU's rules, transcribed ---

struct Rng {
    uint64_t s[4];
    explicit Rng(uint64_t seed) {
        uint64_t x = seed;
        for (auto &v : s) {
            x += 0x9e3779b97f4a7c15ull;
            uint64_t z = x;
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            v = z ^ (z >> 31);
        }
    }
    double uniform() { return (double)(rng_next(s) >> 11) * (1.0 / (double)(1ull << 53)); }
};

using Probs = std::vector<std::pair<int, float>>;

static int total_cmp(float a, float b) {
    auto key = [](float f) {
        int32_t i;
        memcpy(&i, &f, 4);
        return i ^ (int32_t)((uint32_t)(i >> 31) >> 1);
    };
    int32_t ka = key(a), kb = key(b);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
}

static Probs ref_probs(const std::vector<float> &logits, int top_k, float top_p, float min_p,
                       float temp) {
    struct C { int id; float l; };
    std::vector<C> c;
    for (int i = 0; i < (int)logits.size(); i++)
        c.push_back({i, std::isnan(logits[i]) ? -INFINITY : logits[i]});
    std::sort(c.begin(), c.end(), [](const C &a, const C &b) {
        int o = total_cmp(b.l, a.l);
        return o != 0 ? o < 0 : a.id < b.id;
    });
    if (top_k > 0 && top_k < (int)c.size()) c.resize(top_k);
    if (top_p < 1.f) {
        float max = c[0].l;
        double total = 0;
        for (auto &x : c) total += exp((double)(x.l - max));
        double cum = 0;
        for (size_t i = 0; i < c.size(); i++) {
            cum += exp((double)(c[i].l - max)) / total;
            if (cum >= (double)top_p) {
                c.resize(i + 1);
                break;
            }
        }
    }
    if (min_p > 0.f) {
        float cut = c[0].l + logf(min_p);
        size_t keep = c.size();
        for (size_t i = 0; i < c.size(); i++)
            if (c[i].l < cut) {
                keep = i;
                break;
            }
        c.resize(std::max<size_t>(keep, 1));
    }
    float max = c[0].l;
    if (max == -INFINITY) return {{c[0].id, 1.f}};
    double inv_t = 1.0 / (double)temp, total = 0;
    Probs out;
    for (auto &x : c) {
        double w = exp((double)(x.l - max) * inv_t);
        total += w;
        out.push_back({x.id, (float)w});
    }
    for (auto &x : out) x.second = (float)((double)x.second / total);
    return out;
}

static int ref_draw(const Probs &p, Rng &rng) {
    double r = rng.uniform();
    for (auto &x : p) {
        r -= (double)x.second;
        if (r < 0) return x.first;
    }
    return p.empty() ? 0 : p.back().first;
}

// `Sampler::sample` past the filters (`Sampler::draw`): weights kept as f32, one uniform
// scaled by their double total, no uniform when every token is impossible.
static int ref_sample(const std::vector<float> &logits, int top_k, float top_p, float min_p,
                      float temp, Rng &rng) {
    Probs p = ref_probs(logits, top_k, top_p, min_p, temp);
    // ref_probs normalized; redo the weights as `draw` keeps them, over the same candidates.
    float max = -INFINITY;
    for (float l : logits) max = std::max(max, std::isnan(l) ? -INFINITY : l);
    if (max == -INFINITY) return p[0].first;
    double inv_t = 1.0 / (double)temp, total = 0;
    std::vector<float> w;
    for (auto &x : p) {
        float l = std::isnan(logits[x.first]) ? -INFINITY : logits[x.first];
        double e = exp((double)(l - max) * inv_t);
        total += e;
        w.push_back((float)e);
    }
    double r = rng.uniform() * total;
    for (size_t j = 0; j < p.size(); j++) {
        r -= (double)w[j];
        if (r < 0) return p[j].first;
    }
    for (size_t j = p.size(); j-- > 0;)
        if (w[j] > 0.f) return p[j].first;
    return p[0].first;
}

static float get(const Probs &p, int id) {
    for (auto &x : p)
        if (x.first == id) return x.second;
    return 0.f;
}

// `Judge::judge`: -1 keeps x.
static int ref_judge(const Probs &p, const Probs &q, int x, Rng &rng) {
    double px = get(p, x), qx = get(q, x);
    if (px >= qx) return -1;
    if (rng.uniform() * qx < px) return -1;
    Probs r;
    double total = 0;
    for (auto &e : p) {
        float w = std::max(e.second - get(q, e.first), 0.f);
        if (w > 0.f) {
            r.push_back({e.first, w});
            total += w;
        }
    }
    for (auto &e : r) e.second = (float)((double)e.second / total);
    std::sort(r.begin(), r.end(), [](auto &a, auto &b) {
        int o = total_cmp(b.second, a.second);
        return o != 0 ? o < 0 : a.first < b.first;
    });
    return ref_draw(r.empty() ? p : r, rng);
}

static wick_sample_cfg cfg_of(int top_k, float top_p, float min_p, float temp, int vocab) {
    wick_sample_cfg c;
    c.k = top_k == 0 || top_k > vocab ? vocab : top_k;
    c.top_p = top_p;
    c.min_p_on = min_p > 0.f;
    c.ln_min_p = min_p > 0.f ? logf(min_p) : 0.f;
    c.inv_t = 1.0 / (double)temp;
    return c;
}

// --- tests ---

static std::mt19937_64 gen(7);
static int failures = 0, checks = 0;

static void check(bool ok, const char *what, int trial) {
    checks++;
    if (!ok) {
        failures++;
        if (failures < 20) fprintf(stderr, "FAIL %s (trial %d)\n", what, trial);
    }
}

static float unif(float lo, float hi) {
    return std::uniform_real_distribution<float>(lo, hi)(gen);
}

// Random logits with the awkward cases: repeated values (ties at the top-k boundary),
// NaN, -inf, signed zeros, a row of -inf.
static std::vector<float> random_row(int vocab, int kind) {
    std::vector<float> l(vocab);
    for (auto &x : l) x = unif(-6.f, 6.f);
    if (kind == 1)
        for (auto &x : l) x = (float)(int)unif(-3.f, 3.f);  // few distinct values
    if (kind == 2) {
        for (int i = 0; i < vocab / 5 + 1; i++) l[gen() % vocab] = NAN;
        for (int i = 0; i < vocab / 5 + 1; i++) l[gen() % vocab] = -INFINITY;
        l[gen() % vocab] = 0.f;
        l[gen() % vocab] = -0.f;
    }
    if (kind == 3)
        for (auto &x : l) x = -INFINITY;
    if (kind == 4)
        for (auto &x : l) x = unif(-30.f, 30.f);
    return l;
}

struct Setting { int top_k; float top_p, min_p, temp; };

static Setting random_setting(int vocab) {
    static const Setting s[] = {
        {40, 0.95f, 0.05f, 0.8f}, {0, 1.f, 0.f, 1.f},   {3, 1.f, 0.f, 0.5f},
        {1000, 0.9f, 0.f, 1.3f},  {1, 1.f, 0.f, 2.f},   {0, 0.5f, 0.2f, 0.7f},
        {7, 0.99f, 0.5f, 3.f},    {1024, 1.f, 0.01f, 1.f},
    };
    for (;;) {
        Setting x = s[gen() % (sizeof s / sizeof s[0])];
        int k = x.top_k == 0 || x.top_k > vocab ? vocab : x.top_k;
        if (k <= WICK_SAMPLE_CAP) return x;
    }
}

static const int VOCABS[] = {1, 5, 100, 512, 1500, 49152};

static void test_rows(int trials) {
    for (int t = 0; t < trials; t++) {
        int vocab = VOCABS[gen() % 6];
        Setting st = random_setting(vocab);
        int rows = 1 + gen() % 3;
        std::vector<float> x;
        for (int r = 0; r < rows; r++) {
            auto row = random_row(vocab, gen() % 5);
            x.insert(x.end(), row.begin(), row.end());
        }
        std::vector<int> ids(rows * WICK_SAMPLE_CAP, -7), cnt(rows, -7);
        std::vector<float> probs(rows * WICK_SAMPLE_CAP, -7.f);
        wick_sample_cfg cfg = cfg_of(st.top_k, st.top_p, st.min_p, st.temp, vocab);
        check(wick_sample_rows(x.data(), rows, vocab, cfg, ids.data(), probs.data(),
                               cnt.data()) == 0,
              "wick_sample_rows launches", t);
        for (int r = 0; r < rows; r++) {
            std::vector<float> row(x.begin() + r * vocab, x.begin() + (r + 1) * vocab);
            Probs want = ref_probs(row, st.top_k, st.top_p, st.min_p, st.temp);
            bool same = cnt[r] == (int)want.size();
            for (int j = 0; same && j < cnt[r]; j++)
                same = ids[r * WICK_SAMPLE_CAP + j] == want[j].first &&
                       probs[r * WICK_SAMPLE_CAP + j] == want[j].second;
            if (!same)
                fprintf(stderr, "rows: vocab %d k %d p %g minp %g t %g: count %d vs %zu\n",
                        vocab, st.top_k, st.top_p, st.min_p, st.temp, cnt[r], want.size());
            check(same, "sampled distribution == Sampler::probs", t);
        }
    }
}

static void test_pick(int trials) {
    for (int t = 0; t < trials; t++) {
        int vocab = VOCABS[gen() % 5];
        Setting st = random_setting(vocab);
        auto row = random_row(vocab, gen() % 5);
        uint64_t seed = gen();
        uint64_t state[4];
        wick_sample_seed(state, seed);
        Rng host(seed);
        int params[2] = {-1, -1}, proposals[4] = {-1, -1, -1, -1};
        float top[4] = {-1, -1, -1, -1};
        std::vector<float> q(3 * vocab, 9.f);
        wick_sample_cfg cfg = cfg_of(st.top_k, st.top_p, st.min_p, st.temp, vocab);
        Probs want = ref_probs(row, st.top_k, st.top_p, st.min_p, st.temp);
        bool ok = true;
        for (int i = 0; i < 3; i++) {
            wick_spec_pick_sampled(row.data(), vocab, cfg, state, params, 40 + i, proposals,
                                   top, q.data(), i);
            int w = ref_draw(want, host);
            ok = ok && proposals[i] == w && params[0] == 40 + i && params[1] == w &&
                 top[i] == want[0].second;
            for (int id = 0; id < vocab; id++) ok = ok && q[i * vocab + id] == get(want, id);
        }
        check(ok, "sampled pick == draw_from, q row == probs", t);
    }
}

// Plain decoding's sampled pick over a run of tokens, each from new logits, some with
// masked tokens: the same ids as `Sampler::sample` on the masked logits, its stream carried
// from token to token, and the state left where the host's is.
static void test_plain(int trials) {
    for (int t = 0; t < trials; t++) {
        int vocab = VOCABS[gen() % 6];
        Setting st = random_setting(vocab);
        uint64_t seed = gen(), state[4];
        wick_sample_seed(state, seed);
        Rng host(seed);
        wick_sample_cfg cfg = cfg_of(st.top_k, st.top_p, st.min_p, st.temp, vocab);
        bool ok = true;
        for (int step = 0; step < 6; step++) {
            auto row = random_row(vocab, gen() % 5);
            std::vector<int> mask;
            if (gen() % 3 == 0)
                for (int m = 0; m < 3; m++) mask.push_back((int)(gen() % vocab));
            auto want_row = row;
            for (int m : mask) want_row[m] = -INFINITY;
            int params[2] = {-1, -1}, out = -1;
            // Bit for bit: NaN logits stay NaN.
            int e = wick_mask_logits(row.data(), mask.data(), (int)mask.size());
            e |= memcmp(row.data(), want_row.data(), vocab * sizeof(float));
            e |= wick_plain_sample(row.data(), vocab, cfg, state, params, 10 + step, &out);
            ok = ok && e == 0;
            int w = ref_sample(want_row, st.top_k, st.top_p, st.min_p, st.temp, host);
            if (out != w || params[0] != 10 + step || params[1] != w) {
                fprintf(stderr, "plain: vocab %d k %d p %g minp %g t %g step %d: %d vs %d\n",
                        vocab, st.top_k, st.top_p, st.min_p, st.temp, step, out, w);
                ok = false;
            }
        }
        Rng after(0);
        memcpy(after.s, state, sizeof state);
        ok = ok && after.uniform() == host.uniform();
        check(ok, "plain sampled pick == Sampler::sample", t);
    }
}

static void test_accept(int trials) {
    int accepted_total = 0, rejected = 0, bonus = 0;
    for (int t = 0; t < trials; t++) {
        int vocab = VOCABS[gen() % 4];
        Setting ts = random_setting(vocab), ds = random_setting(vocab);
        bool one_hot = gen() % 4 == 0;
        int n = gen() % 6;
        // Drafts often close to the target, so that whole drafts are kept too.
        std::vector<Probs> p, q;
        std::vector<float> qd(std::max(n, 1) * vocab, 0.f);
        std::vector<int> proposals(n);
        std::vector<float> top(n);
        Rng drafter(gen());
        for (int i = 0; i <= n; i++) {
            auto row = random_row(vocab, gen() % 3 == 0 ? gen() % 5 : 0);
            p.push_back(ref_probs(row, ts.top_k, ts.top_p, ts.min_p, ts.temp));
            if (i == n) break;
            if (gen() % 3 == 0)
                for (auto &x : row) x += unif(-0.5f, 0.5f);
            else
                row = random_row(vocab, 0);
            Probs qi = ref_probs(row, ds.top_k, ds.top_p, ds.min_p, ds.temp);
            int x = ref_draw(qi, drafter);
            if (one_hot) qi = {{x, 1.f}};
            for (auto &e : qi) qd[i * vocab + e.first] = e.second;
            proposals[i] = x;
            top[i] = unif(0.f, 1.f);
            q.push_back(qi);
        }
        int draft_min = gen() % 4;
        float p_min = (float[]){0.f, 0.3f, 0.7f}[gen() % 3];
        std::vector<int> ids((n + 1) * WICK_SAMPLE_CAP), cnt(n + 1);
        std::vector<float> pr((n + 1) * WICK_SAMPLE_CAP);
        for (int i = 0; i <= n; i++) {
            cnt[i] = (int)p[i].size();
            for (int j = 0; j < cnt[i]; j++) {
                ids[i * WICK_SAMPLE_CAP + j] = p[i][j].first;
                pr[i * WICK_SAMPLE_CAP + j] = p[i][j].second;
            }
        }
        uint64_t seed = gen(), state[4];
        wick_sample_seed(state, seed);
        std::vector<int> out(3 + n, -9);
        wick_spec_accept(ids.data(), pr.data(), cnt.data(), one_hot ? nullptr : qd.data(),
                         vocab, proposals.data(), top.data(), n, draft_min, p_min, state,
                         out.data());
        // The host's rule on the same numbers.
        Rng rng(seed);
        int valid = n;
        for (int i = draft_min; i < n; i++)
            if (top[i] < p_min) {
                valid = i;
                break;
            }
        int acc = 0, next = -1;
        for (;; acc++) {
            if (acc == valid) {
                next = ref_draw(p[acc], rng);
                bonus++;
                break;
            }
            int r = ref_judge(p[acc], q[acc], proposals[acc], rng);
            if (r >= 0) {
                next = r;
                rejected++;
                break;
            }
        }
        accepted_total += acc;
        bool ok = out[0] == valid && out[1] == acc && out[2] == next;
        for (int j = 0; j < n; j++) ok = ok && out[3 + j] == proposals[j];
        // The state moved on as the host's did.
        Rng after(0);
        memcpy(after.s, state, sizeof state);
        ok = ok && after.uniform() == rng.uniform();
        if (!ok)
            fprintf(stderr, "accept: n %d valid %d/%d acc %d/%d next %d/%d one_hot %d\n", n,
                    out[0], valid, out[1], acc, out[2], next, one_hot);
        check(ok, "accept kernel == Judge::judge", t);
    }
    fprintf(stderr, "accept: %d proposals kept, %d rejections, %d bonus draws\n",
            accepted_total, rejected, bonus);
    check(accepted_total > 0 && rejected > 0 && bonus > 0, "every path of accept ran", 0);
}

int main(int argc, char **argv) {
    if (argc > 1) emu_threads = atoi(argv[1]);
    int trials = argc > 2 ? atoi(argv[2]) : 60;
    test_rows(trials);
    test_pick(trials / 2);
    test_accept(trials * 3);
    test_plain(trials);
    fprintf(stderr, "%d checks, %d failures (%d threads a block)\n", checks, failures,
            emu_threads);
    return failures ? 1 : 0;
}
