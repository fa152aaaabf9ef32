//! End-to-end greedy generation against the golden outputs in tests/fixtures
//! (llama2.c's and llama.cpp's outputs, and an exact independent forward pass).

mod common;

use common::{repo_file, smollm2, stories260k, wick};

/// Runs `wick gen` greedily and returns stdout, failing on a non-zero exit.
fn gen(model: Option<&std::path::Path>, prompt: &str, n: usize, special: bool) -> String {
    let mut cmd = wick();
    cmd.args([
        "gen",
        "--temp",
        "0",
        "-n",
        &n.to_string(),
        "--prompt",
        prompt,
    ]);
    if let Some(m) = model {
        cmd.arg("-m").arg(m);
    }
    if special {
        cmd.arg("--special");
    }
    let out = cmd.output().expect("run wick");
    assert!(
        out.status.success(),
        "wick gen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

#[test]
fn stories260k_greedy_200_matches_llama2c_byte_for_byte() {
    let want = std::fs::read(repo_file("tests/fixtures/stories260K.greedy200.txt")).unwrap();
    // No -m: the embedded default model is stories260K. An empty prompt is BOS alone.
    let got = gen(None, "", 200, false);
    assert_eq!(got.as_bytes(), &want[..], "got:\n{got}");
}

struct Case {
    prompt: String,
    n: usize,
    special: bool,
    expect: String,
    exact: String,
    stable_prefix: String,
}

fn cases(fixture: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(repo_file(fixture)).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("expect").is_some())
        .map(|v| Case {
            prompt: v["prompt"].as_str().unwrap().to_string(),
            n: v["n"].as_u64().unwrap() as usize,
            special: v["special"].as_bool().unwrap(),
            expect: v["expect"].as_str().unwrap().to_string(),
            exact: v["exact"].as_str().unwrap().to_string(),
            stable_prefix: v["stable_prefix"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Length in chars of the common prefix.
fn agree(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

#[test]
fn stories260k_continuations_match_llama_cpp() {
    for c in cases("tests/fixtures/stories260K.greedy.jsonl") {
        let got = gen(Some(&stories260k()), &c.prompt, c.n, c.special);
        // An all-F32 model has no quantization to disagree about: demand llama.cpp's text.
        assert_eq!(got, c.expect, "prompt {:?}", c.prompt);
        assert_eq!(got, c.exact, "prompt {:?}", c.prompt);
    }
}

#[test]
fn smollm2_continuations_match_stable_prefix() {
    let model = smollm2();
    for c in cases("tests/fixtures/smollm2.greedy.jsonl") {
        let got = gen(Some(&model), &c.prompt, c.n, c.special);
        eprintln!(
            "prompt {:?}: agrees with llama.cpp for {}/{} chars, with the exact pass for {}/{}",
            c.prompt,
            agree(&got, &c.expect),
            c.expect.chars().count(),
            agree(&got, &c.exact),
            c.exact.chars().count()
        );
        assert!(
            got.starts_with(&c.stable_prefix),
            "prompt {:?}: got {got:?}, which does not start with the stable prefix {:?}",
            c.prompt,
            c.stable_prefix
        );
    }
}

#[test]
fn smollm2_says_paris() {
    let prompt =
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let got = gen(Some(&smollm2()), prompt, 32, true);
    assert!(got.contains("Paris"), "answer: {got:?}");
}
