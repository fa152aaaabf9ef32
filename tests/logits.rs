//! SmolLM2's last-position logits against an independent exact forward pass.

mod common;

use wick::backend::cpu::Cpu;
use wick::gguf::GgufFile;
use wick::model::Llama;
use wick::quant::Precision;
use wick::session::Session;
use wick::tokenizer::Tokenizer;

#[test]
fn smollm2_logits_match_reference() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_file("tests/fixtures/smollm2.logits.json")).unwrap(),
    )
    .unwrap();
    let file = GgufFile::open(&common::smollm2()).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();

    let prompt = golden["prompt"].as_str().unwrap();
    let want_ids: Vec<u32> = golden["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let ids = tok.encode(prompt, true, true).unwrap();
    assert_eq!(ids, want_ids, "tokenization of the prompt");

    let reference: Vec<f32> = golden["logits_last"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let max_ref = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let run = |precision| {
        let model = Llama::load(&file, Cpu::new(2, precision)).unwrap();
        let mut session = Session::new(&model, 256).unwrap();
        let logits = session.prefill(&ids).unwrap().to_vec();
        assert_eq!(logits.len(), reference.len());
        let max_diff = logits
            .iter()
            .zip(&reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{precision:?}: max |wick - ref| = {max_diff:.5} (max |ref| {max_ref:.3}); top-1 wick {} ref {}",
            argmax(&logits),
            argmax(&reference)
        );
        (logits, max_diff)
    };

    // The exact path does the reference's math: the golden file's tolerance applies.
    let (logits, max_diff) = run(Precision::Exact);
    assert_eq!(argmax(&logits), argmax(&reference), "top-1 token");
    assert!(
        max_diff <= 0.02 * max_ref,
        "max diff {max_diff} > {}",
        0.02 * max_ref
    );

    // The fast path rounds activations to 8 bits, as llama.cpp does. That moves logits by
    // about 5% of their range here, enough to swap the top two (0.08 apart), so only the
    // size of the error is checked.
    let (_, max_diff) = run(Precision::Fast);
    assert!(max_diff <= 0.08 * max_ref, "fast path max diff {max_diff}");
}
