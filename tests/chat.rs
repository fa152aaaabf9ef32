//! Chat templates, `--chat`, `--stop`, stdin after `--prompt`, and `--json`, through the
//! binary where the behaviour is the command line's, and through `wick::chat` for template
//! rendering, whose expected bytes come from Python's jinja2
//! (tests/fixtures/templates/gen.py).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{fetched, repo_file, smollm2, stories260k, wick};
use wick::chat::{ChatTemplate, Message, BUILTIN};
use wick::gguf::GgufFile;

/// The conversation gen.py renders with every template.
fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You are a terse assistant."),
        Message::new("user", "  Hello!  "),
        Message::new("assistant", "Hi. How can I help?"),
        Message::new("user", "What is 2+2?"),
    ]
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_file(&format!("tests/fixtures/templates/{name}"))).unwrap()
}

/// Renders a GGUF's own template with its BOS and EOS token text, as `wick gen --chat` does.
fn render_gguf(path: &Path, messages: &[Message]) -> String {
    let f = GgufFile::open(path).unwrap();
    let t = ChatTemplate::from_gguf(&f).expect("the GGUF has a chat template");
    let tokens = f.get_array("tokenizer.ggml.tokens").unwrap();
    let piece = |key: &str| {
        f.get_u64(key)
            .and_then(|i| tokens[i as usize].as_str())
            .unwrap_or("")
            .to_string()
    };
    t.render(
        messages,
        true,
        &piece("tokenizer.ggml.bos_token_id"),
        &piece("tokenizer.ggml.eos_token_id"),
    )
    .unwrap()
}

#[test]
fn smollm2_template_matches_jinja2() {
    let got = render_gguf(
        &smollm2(),
        &[
            Message::new("system", "You are a helpful assistant."),
            Message::new("user", "What is the capital of France?"),
        ],
    );
    assert_eq!(got, fixture("smollm2.txt"));
}

#[test]
fn vocab_templates_match_jinja2() {
    for m in ["command-r", "phi-3", "qwen2", "qwen35", "gemma-4"] {
        let got = render_gguf(
            &fetched(&format!("vocab/ggml-vocab-{m}.gguf")),
            &conversation(),
        );
        assert_eq!(got, fixture(&format!("vocab-{m}.txt")), "template of {m}");
    }
}

#[test]
fn builtin_templates_match_jinja2() {
    if std::env::var_os("WICK_BLESS").is_some() {
        for (name, src) in BUILTIN {
            let copy = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/fixtures/templates/builtin/{name}.jinja"));
            std::fs::write(copy, src).unwrap();
        }
    }
    for (name, src) in BUILTIN {
        // gen.py renders these copies; keeping them equal to the compiled-in sources makes
        // the fixtures a check of the rendering, not of a stale copy.
        let copy = repo_file(&format!("tests/fixtures/templates/builtin/{name}.jinja"));
        assert_eq!(
            std::fs::read_to_string(&copy).unwrap(),
            *src,
            "{} differs from the built-in '{name}' (WICK_BLESS=1 rewrites it)",
            copy.display()
        );
        let t = ChatTemplate::builtin(name).unwrap();
        let got = t.render(&conversation(), true, "<s>", "</s>").unwrap();
        assert_eq!(
            got,
            fixture(&format!("builtin-{name}.txt")),
            "built-in {name}"
        );
    }
}

#[test]
fn raise_exception_is_an_error() {
    let t = ChatTemplate::builtin("llama2").unwrap();
    let msgs = [Message::new("user", "a"), Message::new("user", "b")];
    let err = t.render(&msgs, true, "<s>", "</s>").unwrap_err();
    assert!(
        format!("{err:#}").contains("Conversation roles must alternate"),
        "{err:#}"
    );
}

/// Runs wick with `stdin` on its standard input (empty: /dev/null).
fn run(args: &[&str], model: Option<&Path>, stdin: &[u8]) -> Output {
    let mut cmd = wick();
    cmd.args(args);
    if let Some(m) = model {
        cmd.arg("-m").arg(m);
    }
    if stdin.is_empty() {
        cmd.stdin(Stdio::null());
    } else {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(mut w) = child.stdin.take() {
        w.write_all(stdin).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
        "no ANSI escapes in piped output"
    );
    out
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn chat_answers_paris() {
    // --exact: with 8-bit activations this 135M Q4_1 model's greedy answer under SmolLM2's
    // default system prompt drifts into French ("L'Étoile, ..."); exact products say Paris.
    let out = run(
        &[
            "gen",
            "--chat",
            "--exact",
            "--temp",
            "0",
            "-n",
            "32",
            "--prompt",
            "What is the capital of France?",
        ],
        Some(&smollm2()),
        b"",
    );
    let text = ok_stdout(&out);
    assert!(text.contains("Paris"), "answer: {text:?}");
}

#[test]
fn chat_with_system_message() {
    let out = run(
        &[
            "gen",
            "--chat",
            "--system",
            "You are a helpful assistant.",
            "--temp",
            "0",
            "-n",
            "64",
            "--json",
            "--prompt",
            "What is the capital of France?",
        ],
        Some(&smollm2()),
        b"",
    );
    let v: serde_json::Value = serde_json::from_str(&ok_stdout(&out)).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
    // The answer ends with <|im_end|>, an end-of-generation token, which is not printed.
    assert_eq!(v["stop_reason"], "eos", "{v}");
    assert!(!text.contains("<|im_end|>"), "{text:?}");
    assert!(out.stderr.is_empty(), "the model has a template: no notice");
}

#[test]
fn chat_without_template_falls_back_to_chatml() {
    let out = run(
        &["gen", "--chat", "-n", "2", "--prompt", "Hi"],
        Some(&stories260k()),
        b"",
    );
    ok_stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("using chatml"), "stderr: {err}");
}

#[test]
fn chat_template_choice() {
    // By name: no notice, since a template was chosen.
    let out = run(
        &[
            "gen",
            "--chat",
            "--chat-template",
            "zephyr",
            "-n",
            "2",
            "--prompt",
            "Hi",
        ],
        None,
        b"",
    );
    ok_stdout(&out);
    assert!(out.stderr.is_empty());
    // From a file.
    let dir = std::env::temp_dir().join(format!("wick-chat-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.jinja");
    std::fs::write(&file, "{{ messages[0]['content'] }} and").unwrap();
    let out = run(
        &[
            "gen",
            "--chat",
            "--chat-template",
            file.to_str().unwrap(),
            "--json",
            "-n",
            "0",
            "--prompt",
            "Once upon a time",
        ],
        None,
        b"",
    );
    let v: serde_json::Value = serde_json::from_str(&ok_stdout(&out)).unwrap();
    // BOS plus "Once upon a time and": the same count as the plain prompt.
    let plain = run(
        &[
            "gen",
            "--json",
            "-n",
            "0",
            "--prompt",
            "Once upon a time and",
        ],
        None,
        b"",
    );
    let p: serde_json::Value = serde_json::from_str(&ok_stdout(&plain)).unwrap();
    assert_eq!(v["prompt_tokens"], p["prompt_tokens"]);
    // A template that writes bos_token itself gets no second BOS from the tokenizer.
    let bos_file = dir.join("bos.jinja");
    std::fs::write(&bos_file, "{{ bos_token }}{{ messages[0]['content'] }}").unwrap();
    let chat_tokens = |f: &Path| -> serde_json::Value {
        let out = run(
            &[
                "gen",
                "--chat",
                "--chat-template",
                f.to_str().unwrap(),
                "--json",
                "-n",
                "0",
                "--prompt",
                "Once upon a time",
            ],
            None,
            b"",
        );
        serde_json::from_str::<serde_json::Value>(&ok_stdout(&out)).unwrap()["prompt_tokens"]
            .clone()
    };
    let plain = run(
        &["gen", "--json", "-n", "0", "--prompt", "Once upon a time"],
        None,
        b"",
    );
    let p: serde_json::Value = serde_json::from_str(&ok_stdout(&plain)).unwrap();
    assert_eq!(chat_tokens(&bos_file), p["prompt_tokens"]);
    // Neither a name nor a file: a usage error, one line.
    let out = run(
        &[
            "gen",
            "--chat",
            "--chat-template",
            "nonesuch",
            "--prompt",
            "Hi",
        ],
        None,
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("chatml, llama2"), "{err}");
}

#[test]
fn stop_string_is_not_printed() {
    let out = run(
        &[
            "gen",
            "--temp",
            "0",
            "--prompt",
            "Once upon a time",
            "--stop",
            "Lily",
        ],
        None,
        b"",
    );
    assert_eq!(ok_stdout(&out), ", there was a little girl named ");
    // Several stop strings: the first to appear wins.
    let out = run(
        &[
            "gen",
            "--temp",
            "0",
            "--prompt",
            "Once upon a time",
            "--stop",
            "Lily",
            "--stop",
            "little",
        ],
        None,
        b"",
    );
    assert_eq!(ok_stdout(&out), ", there was a ");
}

#[test]
fn json_output() {
    let out = run(
        &[
            "gen",
            "--temp",
            "0",
            "-n",
            "10",
            "--prompt",
            "Once upon a time",
            "--json",
        ],
        None,
        b"",
    );
    let s = ok_stdout(&out);
    assert_eq!(s.lines().count(), 1, "one JSON object: {s}");
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["text"], ", there was a little girl named Lily");
    assert_eq!(v["generated_tokens"], 10);
    assert_eq!(v["stop_reason"], "length");
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0);
    for k in [
        "load_ms",
        "prefill_ms",
        "decode_ms",
        "prefill_tok_s",
        "decode_tok_s",
    ] {
        assert!(v["timings"][k].is_number(), "timings.{k} in {s}");
    }
    let stop = |args: &[&str]| -> serde_json::Value {
        let mut a = vec![
            "gen",
            "--temp",
            "0",
            "--prompt",
            "Once upon a time",
            "--json",
        ];
        a.extend_from_slice(args);
        serde_json::from_str(&ok_stdout(&run(&a, None, b""))).unwrap()
    };
    let v = stop(&["--stop", "Lily"]);
    assert_eq!(v["stop_reason"], "stop");
    assert_eq!(v["text"], ", there was a little girl named ");
    assert_eq!(
        stop(&["--ctx", "12", "--no-context-shift"])["stop_reason"],
        "context"
    );
}

#[test]
fn stdin_is_appended_to_prompt() {
    let args = [
        "gen",
        "--temp",
        "0",
        "-n",
        "1",
        "--json",
        "--prompt",
        "Once upon a time",
    ];
    let tokens = |stdin: &[u8]| -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&ok_stdout(&run(&args, None, stdin))).unwrap();
        v["prompt_tokens"].as_u64().unwrap()
    };
    let alone = tokens(b"");
    let both = tokens(b"there was a cat");
    assert!(both > alone + 2, "prompt {alone} tokens, with stdin {both}");
    // The same as passing both in --prompt, joined by a newline.
    let joined = run(
        &[
            "gen",
            "--temp",
            "0",
            "-n",
            "1",
            "--json",
            "--prompt",
            "Once upon a time\nthere was a cat",
        ],
        None,
        b"",
    );
    let v: serde_json::Value = serde_json::from_str(&ok_stdout(&joined)).unwrap();
    assert_eq!(v["prompt_tokens"].as_u64().unwrap(), both);
}

#[test]
fn template_errors_are_one_line() {
    let dir = std::env::temp_dir().join(format!("wick-chat-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "raise.jinja",
            "{{ raise_exception('no system role, please') }}",
            1,
            "no system role, please",
        ),
        ("syntax.jinja", "{% for %}", 1, "does not parse"),
    ];
    for (name, src, code, needle) in cases {
        let f = dir.join(name);
        std::fs::write(&f, src).unwrap();
        let out = run(
            &[
                "gen",
                "--chat",
                "--chat-template",
                f.to_str().unwrap(),
                "--prompt",
                "hi",
            ],
            None,
            b"",
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.starts_with("wick: error: ") && err.contains(needle),
            "{name}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    // A path that exists but cannot be read as a file: exit 2.
    let out = run(
        &[
            "gen",
            "--chat",
            "--chat-template",
            dir.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        None,
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
}
