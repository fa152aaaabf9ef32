//! Prompt-lookup drafting: when the last few tokens occurred earlier in the context, what
//! followed them then is a good guess for what follows now (summaries, code edits and
//! quotes repeat their source).

/// Longest and shortest suffix looked up; a longer match is tried first, as it predicts
/// better.
const NGRAM_MAX: usize = 3;
const NGRAM_MIN: usize = 1;
/// Tokens of recent context searched for a match: lookup time per draft, and the copy the
/// speculator makes of the context, stay bounded in an endless generation.
pub const NGRAM_WINDOW: usize = 8192;

/// Appends to `out` up to `k` tokens that followed the latest earlier occurrence of the
/// longest suffix of `ctx` (of `NGRAM_MAX` down to `NGRAM_MIN` tokens) found again in it.
pub fn ngram_draft(ctx: &[u32], k: usize, out: &mut Vec<u32>) {
    if k == 0 {
        return;
    }
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if ctx.len() <= n {
            continue;
        }
        let suffix = &ctx[ctx.len() - n..];
        // Latest first: recent text predicts better. `i + n < len` skips the suffix itself.
        if let Some(i) = (0..ctx.len() - n).rev().find(|&i| &ctx[i..i + n] == suffix) {
            let from = i + n;
            out.extend_from_slice(&ctx[from..(from + k).min(ctx.len())]);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(ctx: &[u32], k: usize) -> Vec<u32> {
        let mut v = Vec::new();
        ngram_draft(ctx, k, &mut v);
        v
    }

    #[test]
    fn continues_the_latest_longest_match() {
        // "1 2 3" occurred at the start, followed by 4 5.
        assert_eq!(draft(&[1, 2, 3, 4, 5, 9, 1, 2, 3], 2), vec![4, 5]);
        // The longest suffix wins over a later shorter match: "2 3" is followed by 4,
        // although "3" alone occurs later, followed by 7.
        assert_eq!(draft(&[2, 3, 4, 3, 7, 2, 3], 3), vec![4, 3, 7]);
        // Among equal matches, the latest.
        assert_eq!(draft(&[5, 1, 5, 2, 5], 1), vec![2]);
        // The continuation may run into the suffix itself.
        assert_eq!(draft(&[7, 7, 7], 4), vec![7]);
    }

    #[test]
    fn nothing_without_a_match() {
        assert!(draft(&[1, 2, 3], 4).is_empty());
        assert!(draft(&[1], 4).is_empty());
        assert!(draft(&[1, 1], 0).is_empty());
    }
}
