//! Robustness of the GGUF reader: exact round trips through the writer, and corrupt input
//! (truncated, bit-flipped, mutated, hand-patched) that must give an error, never a panic,
//! an out-of-bounds slice or a giant allocation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;

use proptest::prelude::*;
use wick::gguf::{tag, GgufError, GgufFile, GgufWriter, Value};
use wick::quant::GgmlType;

// ---------------------------------------------------------------------------------------
// Allocation watch: the largest single allocation made by the current thread, so a test can
// prove that a corrupt length was refused before anything was sized by it. Per thread,
// because the test harness runs tests in parallel.

struct Watch;

thread_local! {
    // `const` and without a destructor: safe to touch from inside the allocator.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

#[global_allocator]
static ALLOC: Watch = Watch;

/// Runs `f` and returns its result with the largest single allocation it made.
fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(|l| l.get()))
}

// ---------------------------------------------------------------------------------------
// Helpers

fn stories() -> Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES
        .get_or_init(|| std::fs::read(common::stories260k()).expect("read stories260K.gguf"))
        .clone()
}

/// Parses `bytes`; on success checks that every tensor's data lies inside the file and
/// touches every byte of it, so a bad slice would show up here and not in a later use.
fn parse_checked(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    let f = GgufFile::from_vec(bytes)?;
    let all = f.bytes().as_ptr_range();
    for t in &f.tensors {
        let d = f.tensor_data(t);
        assert_eq!(d.len() as u64, t.n_bytes, "tensor {:?}", t.name);
        let r = d.as_ptr_range();
        assert!(
            all.start <= r.start && r.end <= all.end,
            "tensor {:?}",
            t.name
        );
        assert_eq!(
            (f.data_offset + t.offset) % f.alignment,
            0,
            "tensor {:?} is misaligned",
            t.name
        );
        std::hint::black_box(d.iter().fold(0u8, |a, &b| a ^ b));
    }
    Ok(f)
}

/// An error message must fit on one line: the CLI prints it after "error: ".
fn assert_one_line(e: &GgufError) {
    let s = e.to_string();
    assert!(!s.contains('\n'), "multi-line error: {s:?}");
    assert!(!s.is_empty());
}

fn expect_err(bytes: Vec<u8>) -> GgufError {
    match parse_checked(bytes) {
        Ok(f) => panic!(
            "parsed a corrupt file: {} tensors, {} keys",
            f.tensors.len(),
            f.metadata.len()
        ),
        Err(e) => {
            assert_one_line(&e);
            e
        }
    }
}

/// Rebuilds a parsed file with the writer: metadata in order, tensor data borrowed.
fn rewrite(f: &GgufFile) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        w.set(k, v.clone());
    }
    for t in &f.tensors {
        w.add_tensor(&t.name, &t.dims, t.ggml_type, f.tensor_data(t))
            .expect("add tensor");
    }
    w.to_vec()
}

/// Absolute position of the fields that follow a tensor's name in the tensor table:
/// `n_dims: u32, dims: [u64; n_dims], type: u32, offset: u64`.
fn tensor_fields(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("tensor {name:?} not in the header"));
    at + needle.len()
}

/// Positions of a tensor's type id and offset fields.
fn type_and_offset_pos(bytes: &[u8], name: &str) -> (usize, usize) {
    let p = tensor_fields(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    let ty = p + 4 + 8 * n_dims;
    (ty, ty + 4)
}

/// Position just after a metadata key (where its u32 type tag starts).
fn key_end(bytes: &[u8], key: &str) -> usize {
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("key {key:?} not in the header"));
    at + needle.len()
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// splitmix64: a tiny seeded generator, so the flip tests are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------
// 1. Round trips

#[test]
fn stories260k_shape() {
    let f = parse_checked(stories()).expect("parse");
    assert_eq!(f.version, 3);
    assert_eq!(f.tensors.len(), 48);
    assert_eq!(f.metadata.len(), 21);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    assert!(f.tensors.iter().all(|t| t.ggml_type == GgmlType::F32));
}

/// The writer reproduces stories260K byte for byte: same metadata order and encoding,
/// same offsets, same padding (the original pads with zeros to 32 and its length is a
/// multiple of 32, exactly as the writer does).
#[test]
fn stories260k_rewrites_byte_identical() {
    let orig = stories();
    let f = GgufFile::from_vec(orig.clone()).expect("parse");
    let again = rewrite(&f);
    assert_eq!(again.len(), orig.len(), "length differs");
    if let Some(i) = again.iter().zip(&orig).position(|(a, b)| a != b) {
        panic!(
            "first difference at byte {i} (data section starts at {})",
            f.data_offset
        );
    }

    // And the parse of the copy agrees field by field (a weaker check, but it names what
    // differs if the byte comparison above ever has to be relaxed).
    let g = parse_checked(again).expect("reparse");
    assert_eq!(g.metadata, f.metadata);
    assert_eq!(g.tensors, f.tensors);
    assert_eq!(g.data_offset, f.data_offset);
}

fn synthetic_metadata() -> Vec<(&'static str, Value)> {
    let strings = |xs: &[&str]| {
        Value::Array(
            tag::STRING,
            xs.iter().map(|s| Value::String(s.to_string())).collect(),
        )
    };
    vec![
        ("general.architecture", Value::String("test".into())),
        ("general.alignment", Value::U32(64)),
        ("t.u8", Value::U8(0xfe)),
        ("t.i8", Value::I8(-7)),
        ("t.u16", Value::U16(0xbeef)),
        ("t.i16", Value::I16(-12345)),
        ("t.u32", Value::U32(0xdead_beef)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.f32", Value::F32(-1.5e-7)),
        ("t.bool.true", Value::Bool(true)),
        ("t.bool.false", Value::Bool(false)),
        ("t.string", Value::String("héllo\n\0wörld ✓".into())),
        ("t.string.empty", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN + 1)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("t.array.empty", Value::Array(tag::F32, vec![])),
        ("t.array.empty_strings", Value::Array(tag::STRING, vec![])),
        (
            "t.array.u8",
            Value::Array(tag::U8, (0..=255).map(Value::U8).collect()),
        ),
        (
            "t.array.i16",
            Value::Array(tag::I16, vec![Value::I16(-1), Value::I16(2)]),
        ),
        (
            "t.array.bool",
            Value::Array(tag::BOOL, vec![Value::Bool(true), Value::Bool(false)]),
        ),
        (
            "t.array.f64",
            Value::Array(tag::F64, vec![Value::F64(0.25), Value::F64(-0.0)]),
        ),
        ("t.array.strings", strings(&["a", "", "ccc"])),
        (
            "t.array.nested",
            Value::Array(
                tag::ARRAY,
                vec![
                    strings(&["x", "yy"]),
                    strings(&[]),
                    strings(&["zzz"]),
                    Value::Array(tag::U32, vec![Value::U32(1)]),
                ],
            ),
        ),
        (
            "t.array.deep",
            Value::Array(
                tag::ARRAY,
                vec![Value::Array(
                    tag::ARRAY,
                    vec![Value::Array(tag::I64, vec![Value::I64(-3)])],
                )],
            ),
        ),
    ]
}

/// Deterministic filler bytes for synthetic tensors.
fn filler(n: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    (0..n).map(|_| r.next() as u8).collect()
}

fn synthetic_tensors() -> Vec<(&'static str, Vec<u64>, GgmlType)> {
    vec![
        ("f32.1d", vec![7], GgmlType::F32),
        ("f16.2d", vec![5, 3], GgmlType::F16),
        ("q8_0.3d", vec![64, 2, 3], GgmlType::Q8_0),
        ("q4_0.4d", vec![32, 1, 2, 2], GgmlType::Q4_0),
        ("q4_1.2d", vec![96, 3], GgmlType::Q4_1),
        ("bf16.3d", vec![3, 1, 5], GgmlType::BF16),
        ("f32.empty", vec![0, 4], GgmlType::F32),
        ("f32.4d", vec![2, 3, 1, 2], GgmlType::F32),
    ]
}

fn synthetic_file() -> (Vec<u8>, Vec<Vec<u8>>) {
    let meta = synthetic_metadata();
    let tensors = synthetic_tensors();
    let datas: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, (_, dims, ty))| {
            let n = ty.bytes_for(dims.iter().product()).expect("whole blocks");
            filler(n as usize, i as u64 + 1)
        })
        .collect();
    let mut w = GgufWriter::new();
    for (k, v) in &meta {
        w.set(k, v.clone());
    }
    for ((name, dims, ty), d) in tensors.iter().zip(&datas) {
        w.add_tensor(name, dims, *ty, d.as_slice()).expect("add");
    }
    (w.to_vec(), datas)
}

#[test]
fn synthetic_round_trip_every_value_type() {
    let (bytes, datas) = synthetic_file();
    assert_eq!(
        bytes.len() % 64,
        0,
        "file length is padded to the alignment"
    );
    let f = parse_checked(bytes.clone()).expect("parse synthetic");
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);

    let meta = synthetic_metadata();
    assert_eq!(f.metadata.len(), meta.len());
    for ((k, v), (k2, v2)) in f.metadata.iter().zip(&meta) {
        assert_eq!(k, k2);
        assert_eq!(v, v2, "value of {k}");
    }
    // Every value type id appears at least once, directly or as an array element type.
    let mut seen = [false; 13];
    for (_, v) in &f.metadata {
        seen[v.type_tag() as usize] = true;
        if let Value::Array(et, _) = v {
            seen[*et as usize] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "type ids not covered: {seen:?}");

    let want = synthetic_tensors();
    assert_eq!(f.tensors.len(), want.len());
    for ((t, (name, dims, ty)), d) in f.tensors.iter().zip(&want).zip(&datas) {
        assert_eq!(&t.name, name);
        assert_eq!(&t.dims, dims);
        assert_eq!(t.ggml_type, *ty);
        assert_eq!(t.offset % 64, 0, "{name} offset");
        assert_eq!(f.tensor_data(t), d.as_slice(), "{name} data");
        assert_eq!(f.tensor(name), Some(t));
    }

    // Writing the parsed file again gives the same bytes.
    assert_eq!(rewrite(&f), bytes);
}

#[test]
fn metadata_only_file_round_trips() {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("none".into()));
    let bytes = w.to_vec();
    let f = parse_checked(bytes.clone()).expect("parse");
    assert!(f.tensors.is_empty());
    assert_eq!(rewrite(&f), bytes);
}

// ---------------------------------------------------------------------------------------
// 2. Truncation

#[test]
fn every_truncation_of_the_header_is_an_error() {
    let orig = stories();
    let f = GgufFile::from_vec(orig.clone()).expect("parse");
    let data_offset = f.data_offset as usize;
    for len in 0..=data_offset {
        let e = expect_err(orig[..len].to_vec());
        // Before the magic is complete the file is "truncated", not "not GGUF".
        if len < 4 {
            assert!(matches!(e, GgufError::Truncated(_)), "len {len}: {e}");
        }
    }
}

#[test]
fn truncation_inside_tensor_data_is_an_error_naming_a_tensor() {
    let orig = stories();
    let f = GgufFile::from_vec(orig.clone()).expect("parse");
    let start = f.data_offset as usize + 1;
    let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
    // A prime stride samples every tensor at varying positions; the last byte too.
    let lens = (start..orig.len()).step_by(997).chain([orig.len() - 1]);
    for len in lens {
        let e = expect_err(orig[..len].to_vec());
        let s = e.to_string();
        assert!(
            names.iter().any(|n| s.contains(n)),
            "len {len}: error does not name a tensor: {s}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. Bit and byte flips

#[test]
fn seeded_flips_in_the_header_never_panic() {
    let orig = stories();
    let header_end = GgufFile::from_vec(orig.clone()).expect("parse").data_offset as usize;
    let mut rng = Rng(0x5eed_0001);
    let (mut ok, mut err) = (0, 0);
    for i in 0..3000 {
        let mut b = orig.clone();
        let at = rng.below(header_end);
        if i % 2 == 0 {
            b[at] ^= 1 << rng.below(8);
        } else {
            b[at] = rng.next() as u8;
        }
        match parse_checked(b) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_one_line(&e);
                err += 1
            }
        }
    }
    // Most flips land in token strings and scores, which stay valid; some must not.
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

// ---------------------------------------------------------------------------------------
// 4. Specific corruptions

#[test]
fn wrong_magic() {
    let mut b = stories();
    b[..4].copy_from_slice(b"GGML");
    let e = expect_err(b);
    assert!(matches!(e, GgufError::BadMagic(_)), "{e}");
    assert!(e.to_string().contains("GGUF"), "{e}");
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, u32::MAX] {
        let mut b = stories();
        put_u32(&mut b, 4, v);
        let e = expect_err(b);
        assert!(matches!(e, GgufError::Version(x) if x == v), "{e}");
        assert!(e.to_string().contains(&v.to_string()), "{e}");
    }
}

#[test]
fn tensor_offset_past_the_end_names_the_tensor() {
    let orig = stories();
    for name in [
        "token_embd.weight",
        "blk.2.attn_k.weight",
        "blk.4.ffn_up.weight",
    ] {
        for off in [orig.len() as u64 & !31, 1 << 40, !31u64] {
            let mut b = orig.clone();
            let (_, off_pos) = type_and_offset_pos(&b, name);
            put_u64(&mut b, off_pos, off);
            let e = expect_err(b);
            assert!(e.to_string().contains(name), "{name} @ {off}: {e}");
        }
    }
}

#[test]
fn unknown_tensor_type_names_tensor_and_id() {
    for id in [4u32, 99, u32::MAX] {
        let mut b = stories();
        let (ty_pos, _) = type_and_offset_pos(&b, "blk.1.attn_v.weight");
        put_u32(&mut b, ty_pos, id);
        let e = expect_err(b);
        match &e {
            GgufError::UnknownType { tensor, id: got } => {
                assert_eq!(tensor, "blk.1.attn_v.weight");
                assert_eq!(*got, id);
            }
            _ => panic!("wrong error: {e}"),
        }
        let s = e.to_string();
        assert!(
            s.contains("blk.1.attn_v.weight") && s.contains(&id.to_string()),
            "{s}"
        );
    }
}

#[test]
fn misaligned_tensor_offset() {
    let mut b = stories();
    let (_, off_pos) = type_and_offset_pos(&b, "output.weight");
    let off = get_u64(&b, off_pos);
    put_u64(&mut b, off_pos, off + 4);
    let e = expect_err(b);
    let s = e.to_string();
    assert!(
        s.contains("output.weight") && s.contains("alignment"),
        "{s}"
    );
}

#[test]
fn too_many_dimensions() {
    let mut b = stories();
    let p = tensor_fields(&b, "output_norm.weight");
    put_u32(&mut b, p, 5);
    let e = expect_err(b);
    assert!(e.to_string().contains("output_norm.weight"), "{e}");
}

#[test]
fn bad_alignment_values() {
    for a in [0u32, 3, 48, 1 << 31] {
        // The writer refuses to write a bad alignment, so patch a good one in place.
        let mut w = GgufWriter::new();
        w.set("general.alignment", Value::U32(32));
        let mut bytes = w.to_vec();
        let at = key_end(&bytes, "general.alignment") + 4;
        put_u32(&mut bytes, at, a);
        let e = expect_err(bytes);
        assert!(e.to_string().contains("alignment"), "{a}: {e}");
    }
    // The wrong type is refused too, not read as the default.
    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::String("32".into()));
    expect_err(w.to_vec());
}

#[test]
fn duplicate_keys_and_tensor_names() {
    // The writer will not produce duplicates, so rename a key in place to another key of
    // the same length.
    let mut b = stories();
    let p = key_end(&b, "llama.block_count") - "llama.block_count".len();
    b[p..p + 17].copy_from_slice(b"general.file_type");
    let e = expect_err(b);
    assert!(e.to_string().contains("duplicate metadata key"), "{e}");

    let mut w = GgufWriter::new();
    w.add_tensor("a", &[1], GgmlType::F32, vec![0u8; 4])
        .unwrap();
    w.add_tensor("b", &[1], GgmlType::F32, vec![0u8; 4])
        .unwrap();
    let mut b = w.to_vec();
    let p = tensor_fields(&b, "b") - 1;
    b[p] = b'a';
    let e = expect_err(b);
    assert!(e.to_string().contains("duplicate"), "{e}");
}

/// Header fields that hold counts or lengths, set to absurd values. Each must be refused at
/// once, without sizing any allocation by the bogus number.
#[test]
fn huge_counts_and_lengths_fail_fast_without_giant_allocations() {
    let orig = stories();
    let arch_val = key_end(&orig, "general.architecture") + 4; // string length of the value
    let tokens_len = key_end(&orig, "tokenizer.ggml.tokens") + 4 + 4; // after type + elem type
    let scores_len = key_end(&orig, "tokenizer.ggml.scores") + 4 + 4;
    let first_key = 24; // length of the first key
    let name_len = tensor_fields(&orig, "token_embd.weight") - "token_embd.weight".len() - 8;
    let fields: &[(&str, usize)] = &[
        ("tensor count", 8),
        ("metadata count", 16),
        ("first key length", first_key),
        ("string value length", arch_val),
        ("string array length", tokens_len),
        ("f32 array length", scores_len),
        ("tensor name length", name_len),
    ];
    for &(what, pos) in fields {
        for v in [u64::MAX, u64::MAX / 2, 1 << 62, orig.len() as u64] {
            let mut b = orig.clone();
            put_u64(&mut b, pos, v);
            let t = std::time::Instant::now();
            let (r, largest) = largest_alloc(|| GgufFile::from_vec(b).map(|_| ()));
            let e = r.expect_err(what);
            assert_one_line(&e);
            assert!(
                t.elapsed().as_secs_f64() < 1.0,
                "{what} = {v}: took {:?}",
                t.elapsed()
            );
            // The input is 1.2 MB; nothing legitimate here needs more than a few of those.
            assert!(
                largest < 8 << 20,
                "{what} = {v}: allocated {largest} bytes at once"
            );
        }
    }
}

/// A length that does fit in the file but whose items turn out to be bad: the reader must
/// not reserve room for all of them up front, because each parsed item takes far more
/// memory than its smallest encoding (a `Value` is 32 bytes, a u8 item 1 byte). On a
/// multi-gigabyte model file that reservation alone would abort the process.
#[test]
fn plausible_but_wrong_array_length_does_not_reserve_for_it() {
    const N: usize = 16 << 20;
    let mut w = GgufWriter::new();
    w.set("bools", Value::Array(tag::BOOL, vec![Value::Bool(true)]));
    let mut b = w.to_vec();
    let len_pos = key_end(&b, "bools") + 4 + 4;
    // Claim N bools and provide N bytes, but make the second one invalid (2).
    put_u64(&mut b, len_pos, N as u64);
    let start = len_pos + 8;
    b.truncate(start);
    b.resize(start + N, 1);
    b[start + 1] = 2;
    let (r, largest) = largest_alloc(|| GgufFile::from_vec(b).map(|_| ()));
    let e = r.expect_err("bool 2");
    assert!(e.to_string().contains("bool"), "{e}");
    assert!(largest < N, "reserved {largest} bytes for a {N}-byte array");

    // The same for the metadata count and the tensor count.
    for count_pos in [8usize, 16] {
        let mut b = GgufWriter::new().to_vec();
        let n = (N / 24) as u64; // fits the minimum entry sizes of the padding below
        put_u64(&mut b, count_pos, n);
        b.resize(b.len() + N, 0xff);
        let (r, largest) = largest_alloc(|| GgufFile::from_vec(b).map(|_| ()));
        assert_one_line(&r.expect_err("garbage entries"));
        assert!(
            largest < N,
            "count at {count_pos}: reserved {largest} bytes"
        );
    }
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut v = Value::Array(tag::U8, vec![]);
    for _ in 0..64 {
        v = Value::Array(tag::ARRAY, vec![v]);
    }
    let mut w = GgufWriter::new();
    w.set("deep", v);
    let e = expect_err(w.to_vec());
    assert!(e.to_string().contains("deep"), "{e}");
}

#[test]
fn unknown_value_types_are_refused() {
    let mut w = GgufWriter::new();
    w.set("k", Value::U8(0));
    w.set("arr", Value::Array(tag::U8, vec![]));
    let good = w.to_vec();
    for t in [13u32, 99, u32::MAX] {
        let mut b = good.clone();
        put_u32(&mut b, key_end(&good, "k"), t);
        expect_err(b);
        let mut b = good.clone();
        put_u32(&mut b, key_end(&good, "arr") + 4, t);
        expect_err(b);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Property test: random edits of the header

#[derive(Clone, Debug)]
enum Edit {
    Overwrite(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    const HEAD: usize = 4096;
    prop_oneof![
        4 => (0..HEAD, any::<u8>()).prop_map(|(p, b)| Edit::Overwrite(p, b)),
        1 => (0..HEAD, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, v)| Edit::Insert(p, v)),
        1 => (0..HEAD, 1..16usize).prop_map(|(p, n)| Edit::Delete(p, n)),
    ]
}

fn apply(b: &mut Vec<u8>, e: &Edit) {
    match e {
        Edit::Overwrite(p, x) => b[*p] = *x,
        Edit::Insert(p, v) => {
            b.splice(*p..*p, v.iter().copied());
        }
        Edit::Delete(p, n) => {
            b.drain(*p..(*p + n).min(b.len()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_headers_never_panic(edits in prop::collection::vec(edit(), 1..8)) {
        let mut b = stories();
        for e in &edits {
            apply(&mut b, e);
        }
        if let Err(e) = parse_checked(b) {
            assert_one_line(&e);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Seed corpus for the fuzz target (fuzz/). The committed seeds must be what this builds,
// so the corpus never drifts from the writer; `WICK_WRITE_CORPUS=1 cargo test --test
// gguf_reader fuzz_corpus` rewrites them.

#[test]
fn fuzz_corpus_is_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gguf_reader");
    let write = std::env::var_os("WICK_WRITE_CORPUS").is_some();
    let save = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(&p, bytes).expect("write seed");
        }
        let committed = std::fs::read(&p)
            .unwrap_or_else(|e| panic!("fuzz seed {} is missing: {e}", p.display()));
        assert!(committed == bytes, "fuzz seed {} is stale", p.display());
        // Every seed but the deliberately cut one parses.
        if !name.contains("head4k") {
            parse_checked(bytes.to_vec()).expect("seed parses");
        }
    };

    save("synthetic-all-types.gguf", &synthetic_file().0);

    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    save("metadata-only.gguf", &w.to_vec());

    let mut w = GgufWriter::new();
    w.set("general.alignment", Value::U32(8));
    w.set(
        "v",
        Value::Array(tag::ARRAY, vec![Value::Array(tag::STRING, vec![])]),
    );
    w.add_tensor("t", &[3], GgmlType::F32, filler(12, 9))
        .unwrap();
    w.add_tensor("q", &[32, 2], GgmlType::Q4_0, filler(36, 10))
        .unwrap();
    save("two-tensors-align8.gguf", &w.to_vec());

    let mut w = GgufWriter::new();
    w.add_tensor("e", &[0], GgmlType::F16, Vec::new()).unwrap();
    save("empty-tensor.gguf", &w.to_vec());

    // Cut inside the token list: not loadable, but it leads the fuzzer into a real header.
    save("stories260K-head4k.gguf", &stories()[..4096]);
}
