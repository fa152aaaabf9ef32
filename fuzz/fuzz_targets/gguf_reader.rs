//! Parses arbitrary bytes as GGUF. Any panic, out-of-bounds access or oversized
//! allocation (libFuzzer's -malloc_limit_mb) is a bug in the reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wick::gguf::{Abbrev, GgufFile, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_vec(data.to_vec()) else {
        return;
    };
    // Touch every byte of every tensor: the slices were bounds-checked at parse time, and
    // reading them proves it.
    let mut acc = 0u8;
    for t in &f.tensors {
        let d = f.tensor_data(t);
        assert_eq!(d.len() as u64, t.n_bytes);
        acc ^= d.iter().fold(0u8, |a, &b| a ^ b);
        assert!(f.tensor(&t.name).is_some());
    }
    // Walk every metadata value, through the accessors and the printer.
    for (k, v) in &f.metadata {
        touch(v);
        assert!(f.get(k).is_some());
        acc ^= Abbrev(v, 4).to_string().len() as u8;
    }
    std::hint::black_box(acc);
});

fn touch(v: &Value) {
    std::hint::black_box((v.as_i64(), v.as_u64(), v.as_f64(), v.as_bool(), v.as_str()));
    if let Value::Array(_, items) = v {
        items.iter().for_each(touch);
    }
}
