//! Speculative decoding: it must never change what the model generates. Greedy output is
//! token for token that of plain decoding; sampled output follows the model's distribution.

mod common;

use wick::backend::cpu::Cpu;
use wick::chat::{ChatTemplate, Message};
use wick::gguf::GgufFile;
use wick::model::Llama;
use wick::quant::Precision;
use wick::sample::chi2::goodness_of_fit;
use wick::sample::{Probs, Sampler, SamplerParams};
use wick::session::Session;
use wick::spec::{check_vocab, Decoder, Drafter, Plain, SpecParams, Speculator};
use wick::tokenizer::Tokenizer;

fn greedy() -> SamplerParams {
    SamplerParams {
        temp: 0.0,
        seed: 1,
        ..SamplerParams::default()
    }
}

fn generate(d: &mut dyn Decoder, prompt: &[u32], n: usize) -> Vec<u32> {
    d.prefill(prompt).unwrap();
    (0..n).map_while(|_| d.next().unwrap()).collect()
}

fn plain<'a>(m: &Llama<'a, &'a Cpu>, prompt: &[u32], n: usize) -> Vec<u32> {
    let s = Session::new(m, 512).unwrap();
    let v = m.config.vocab_size;
    generate(&mut Plain::new(s, Sampler::new(greedy(), v)), prompt, n)
}

/// Greedy speculative output, and how many drafted tokens were accepted.
fn speculative<'m, 'a>(
    m: &'m Llama<'a, &'a Cpu>,
    draft: Option<&'m Llama<'a, &'a Cpu>>,
    sp: SpecParams,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, usize, usize) {
    let v = m.config.vocab_size;
    let drafter = match draft {
        Some(d) => Drafter::Model {
            session: Session::new(d, 512).unwrap(),
            sampler: Sampler::new(greedy(), v),
        },
        None => Drafter::Ngram,
    };
    let s = Session::new(m, 512).unwrap();
    let mut spec = Speculator::new(s, Sampler::new(greedy(), v), drafter, sp, v).unwrap();
    let out = generate(&mut spec, prompt, n);
    (out, spec.stats().drafted, spec.stats().accepted)
}

/// A fixed lookahead, so that every step drafts whatever the timings.
fn fixed(k: usize) -> SpecParams {
    SpecParams {
        draft_max: k,
        draft_min: k,
        p_min: 0.0,
    }
}

#[test]
fn verified_rows_equal_decode_steps_bit_for_bit() {
    // SmolLM2 is Q4_1 (its embedding Q8_0), whose 4x4 tile kernels round unlike a one-row
    // dot: verification must not use them. The draft model is all Q8_0. Seven rows: a
    // group of four through the row-exact batch kernel (where the CPU has one), then three.
    let models = [
        common::stories260k(),
        common::smollm2(),
        common::repo_file("models/smollm2-draft.gguf"),
    ];
    for path in models {
        let f = GgufFile::open(&path).unwrap();
        let cpu = Cpu::new(2, Precision::Fast);
        let m = Llama::load(&f, &cpu).unwrap();
        let prompt: Vec<u32> = (1..20).collect();
        let extra = [300u32, 301, 302, 303, 304, 305, 306];
        let mut a = Session::new(&m, 64).unwrap();
        a.prefill(&prompt).unwrap();
        let want: Vec<Vec<f32>> = extra.iter().map(|&t| a.step(t).unwrap().to_vec()).collect();
        let mut b = Session::new(&m, 64).unwrap();
        b.reserve_rows(8).unwrap();
        b.prefill(&prompt).unwrap();
        b.feed_all(&extra).unwrap();
        for (i, w) in want.iter().enumerate() {
            let same = b
                .row_logits(i)
                .iter()
                .zip(w)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{} row {i}", path.display());
        }
        // Rows beyond the reservation are refused, not overrun.
        assert!(b.feed_all(&[1; 9]).is_err());
    }
}

/// The CPU has no device to stage tokens on: the speculator stays on the host, and a
/// staged step is refused rather than fed placeholder ids.
#[test]
fn the_cpu_speculates_on_the_host() {
    let f = GgufFile::open(&common::stories260k()).unwrap();
    let cpu = Cpu::new(1, Precision::Fast);
    let m = Llama::load(&f, &cpu).unwrap();
    let v = m.config.vocab_size;
    let mut s = Session::new(&m, 32).unwrap();
    s.prefill(&[1, 2, 3]).unwrap();
    assert!(s.step_staged().is_err());
    assert!(s.verify_staged(2).is_err());
    assert_eq!(s.tokens(), &[1, 2, 3]);
    let spec = Speculator::new(s, Sampler::new(greedy(), v), Drafter::Ngram, fixed(2), v).unwrap();
    assert!(!spec.on_device());
}

#[test]
fn greedy_speculation_matches_plain_on_stories260k() {
    let f = GgufFile::open(&common::stories260k()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let cpu = Cpu::new(2, Precision::Fast);
    let m = Llama::load(&f, &cpu).unwrap();
    for text in [
        "Once upon a time",
        "Lily and Tom went to the park",
        "The cat",
    ] {
        let prompt = tok.encode(text, true, false).unwrap();
        let want = plain(&m, &prompt, 120);
        // The adaptive lookahead (draft_min 0) probes with one token after 3 plain steps;
        // with p_min 0 that probe always drafts, with the default 0.75 every probe may be
        // cut, and slower than plain decoding it then backs off.
        let adaptive = SpecParams {
            p_min: 0.0,
            ..SpecParams::default()
        };
        for sp in [fixed(1), fixed(4), adaptive, SpecParams::default()] {
            let (got, drafted, accepted) = speculative(&m, Some(&m), sp.clone(), &prompt, 120);
            assert_eq!(got, want, "{text:?} with {sp:?}");
            // The draft is the model itself: every draft stands.
            assert!(
                (drafted > 0 || sp.p_min > 0.0) && accepted == drafted,
                "{accepted} of {drafted} with {sp:?}"
            );
        }
    }
}

const CHAT_PROMPTS: [&str; 20] = [
    "What is the capital of France?",
    "Explain why the sky is blue.",
    "Write a haiku about autumn.",
    "How do I boil an egg?",
    "What is photosynthesis?",
    "Give me three tips for better sleep.",
    "What does a CPU do?",
    "Tell me a short story about a dragon.",
    "How many legs does a spider have?",
    "What is the difference between weather and climate?",
    "Translate 'good morning' into Spanish.",
    "Why do cats purr?",
    "What is 12 times 7?",
    "Describe the water cycle.",
    "What are prime numbers?",
    "Suggest a name for a pet goldfish.",
    "How does a rainbow form?",
    "What is the tallest mountain on Earth?",
    "Write a limerick about a frog.",
    "What should I pack for a beach trip?",
];

fn chat_tokens(f: &GgufFile, tok: &Tokenizer, user: &str) -> Vec<u32> {
    let template =
        ChatTemplate::from_gguf(f).unwrap_or_else(|| ChatTemplate::builtin("chatml").unwrap());
    let text = template
        .render(&[Message::new("user", user)], true, "", "")
        .unwrap();
    tok.encode(&text, false, true).unwrap()
}

#[test]
fn greedy_speculation_matches_plain_on_smollm2_chats() {
    let f = GgufFile::open(&common::smollm2()).unwrap();
    let df = GgufFile::open(&common::repo_file("models/smollm2-draft.gguf")).unwrap();
    check_vocab(&f, &df).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let cpu = Cpu::new(2, Precision::Fast);
    let m = Llama::load(&f, &cpu).unwrap();
    let d = Llama::load(&df, &cpu).unwrap();
    let mut accepted = 0;
    for user in CHAT_PROMPTS {
        let prompt = chat_tokens(&f, &tok, user);
        let want = plain(&m, &prompt, 48);
        let sp = SpecParams {
            draft_max: 6,
            draft_min: 1,
            p_min: 0.5,
        };
        let (got, _, a) = speculative(&m, Some(&d), sp, &prompt, 48);
        assert_eq!(got, want, "{user:?}");
        accepted += a;
    }
    // Speculation did happen: the trained draft agrees with the model often.
    assert!(accepted > 200, "only {accepted} drafted tokens accepted");
}

#[test]
fn greedy_ngram_drafting_matches_plain() {
    let f = GgufFile::open(&common::smollm2()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let cpu = Cpu::new(2, Precision::Fast);
    let m = Llama::load(&f, &cpu).unwrap();
    let text = "The old lighthouse keeper climbed the stairs every evening to light the lamp. \
                Ships passing the rocky coast relied on its beam to find their way home. One \
                stormy night the lamp failed, and the keeper carried a lantern to the top.";
    let mut accepted = 0;
    for user in [
        format!("Summarise this text: {text}"),
        format!("Repeat this text exactly: {text}"),
    ] {
        let prompt = chat_tokens(&f, &tok, &user);
        let want = plain(&m, &prompt, 48);
        for sp in [fixed(3), SpecParams::default()] {
            let (got, _, a) = speculative(&m, None, sp, &prompt, 48);
            assert_eq!(got, want, "{user:?}");
            accepted += a;
        }
    }
    assert!(accepted > 10, "only {accepted} drafted tokens accepted");
}

/// The first sampled token with speculation, over many seeds, against the model's own
/// distribution there. The draft is the same tiny model sampled at another temperature
/// and cut-off, so most drafts are wrong and both the acceptance test and the residual
/// draw are exercised.
#[test]
fn sampled_speculation_follows_the_target_distribution() {
    let f = GgufFile::open(&common::stories260k()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let cpu = Cpu::new(1, Precision::Fast);
    let m = Llama::load(&f, &cpu).unwrap();
    let v = m.config.vocab_size;
    let prompt = tok
        .encode("Once upon a time, there was a", true, false)
        .unwrap();
    let target = SamplerParams {
        temp: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 0,
    };
    // The exact law of the first token.
    let mut s = Session::new(&m, 64).unwrap();
    let logits = s.prefill(&prompt).unwrap().to_vec();
    let mut p = Probs::new();
    Sampler::new(target.clone(), v).probs(&logits, &prompt, &mut p);

    let drafts = [
        // Hotter: q spreads mass where p has little.
        SamplerParams {
            temp: 2.5,
            ..target.clone()
        },
        // Colder and cut to three tokens: q misses most of p's support.
        SamplerParams {
            temp: 0.5,
            top_k: 3,
            ..target.clone()
        },
    ];
    const N: usize = 6000;
    for dp in drafts {
        let mut counts = vec![0usize; v];
        let (mut drafted, mut accepted) = (0, 0);
        for seed in 0..N as u64 {
            let drafter = Drafter::Model {
                session: Session::new(&m, 64).unwrap(),
                sampler: Sampler::new(
                    SamplerParams {
                        seed: seed + 1_000_000,
                        ..dp.clone()
                    },
                    v,
                ),
            };
            let ts = Session::new(&m, 64).unwrap();
            let sampler = Sampler::new(
                SamplerParams {
                    seed,
                    ..target.clone()
                },
                v,
            );
            let mut spec = Speculator::new(ts, sampler, drafter, fixed(2), v).unwrap();
            spec.prefill_drafting(&prompt).unwrap();
            let t = spec.next().unwrap().unwrap();
            counts[t as usize] += 1;
            drafted += spec.stats().drafted;
            accepted += spec.stats().accepted;
        }
        let want: Vec<f64> = (0..v as u32).map(|id| p.get(id) as f64).collect();
        let (chi2, cells, pv) = goodness_of_fit(&counts, &want);
        assert!(cells >= 5, "too few cells: {cells}");
        assert!(
            pv > 0.01,
            "{dp:?}: chi2 {chi2} over {cells} cells, p = {pv}"
        );
        // Neither always accepted nor always rejected: both paths ran.
        assert!(
            accepted > drafted / 20 && accepted < drafted * 19 / 20,
            "{accepted} of {drafted} accepted"
        );
    }
}

fn run_gen(args: &[&str]) -> std::process::Output {
    common::wick()
        .arg("gen")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn cli_speculation_prints_the_same_text() {
    let draft = common::stories260k();
    let base = ["-p", "Once upon a time", "-n", "80", "--temp", "0"];
    let want = run_gen(&base);
    assert!(want.status.success());
    let with_model = run_gen(
        &[
            &base[..],
            &[
                "--stats",
                "--draft-model",
                draft.to_str().unwrap(),
                "--draft-min",
                "2",
            ],
        ]
        .concat(),
    );
    assert!(with_model.status.success());
    assert_eq!(
        String::from_utf8_lossy(&with_model.stdout),
        String::from_utf8_lossy(&want.stdout)
    );
    let err = String::from_utf8_lossy(&with_model.stderr);
    assert!(
        err.contains("acceptance rate") && err.contains("tokens per target forward"),
        "{err}"
    );
    let ngram = run_gen(&[&base[..], &["--draft", "ngram", "--draft-min", "2"]].concat());
    assert!(ngram.status.success());
    assert_eq!(ngram.stdout, want.stdout);
}

#[test]
fn cli_refuses_a_draft_with_another_vocabulary() {
    let m = common::smollm2();
    let d = common::stories260k();
    let out = run_gen(&[
        "-m",
        m.to_str().unwrap(),
        "--draft-model",
        d.to_str().unwrap(),
        "-p",
        "hi",
        "-n",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("wick: error: ") && err.contains("vocabulary"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Flags that make no sense are usage errors.
    let out = run_gen(&[
        "--draft",
        "ngram",
        "--draft-max",
        "0",
        "-p",
        "hi",
        "-n",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// The count in `--stats`' "context shifts: N".
fn shifts(stderr: &[u8]) -> usize {
    let err = String::from_utf8_lossy(stderr);
    let at = err
        .find("context shifts: ")
        .expect("--stats prints the shifts")
        + 16;
    err[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn cli_speculation_shifts_the_context_like_plain_decoding() {
    let draft = common::stories260k();
    let base = [
        "-p",
        "Once upon a time",
        "-n",
        "120",
        "--temp",
        "0",
        "--ctx",
        "32",
        "--stats",
    ];
    let want = run_gen(&base);
    assert!(want.status.success());
    assert!(shifts(&want.stderr) > 2, "the context shifted");
    // --draft-min 2: speculation never turns itself off, so every step drafts.
    for extra in [
        &["--draft-model", draft.to_str().unwrap(), "--draft-min", "2"][..],
        &["--draft", "ngram", "--draft-min", "2"],
    ] {
        let got = run_gen(&[&base[..], extra].concat());
        assert!(got.status.success(), "{extra:?}");
        assert!(
            String::from_utf8_lossy(&got.stderr).contains("accepted"),
            "{extra:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            String::from_utf8_lossy(&want.stdout),
            "{extra:?}"
        );
        assert_eq!(shifts(&got.stderr), shifts(&want.stderr), "{extra:?}");
    }
    // With --no-context-shift, speculation stops at the full context as plain decoding does.
    let stop = |extra: &[&str]| {
        let out = run_gen(&[&base[..], &["--no-context-shift", "--json"], extra].concat());
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let plain = stop(&[]);
    let spec = stop(&["--draft-model", draft.to_str().unwrap(), "--draft-min", "2"]);
    let text = |j: &str| serde_json::from_str::<serde_json::Value>(j).unwrap()["text"].clone();
    assert_eq!(text(&spec), text(&plain));
    assert!(spec.contains("\"stop_reason\":\"context\""), "{spec}");
}
