#!/usr/bin/env bash
# Speculative decoding on 20 chat prompts at temperature 0: decode speed of the model alone
# and with speculation, acceptance, and drafted tokens per verification, per prompt and in
# total. Usage: scripts/bench-spec.sh MODEL [N_TOKENS] -- SPECULATION FLAGS...
# e.g. scripts/bench-spec.sh SmolLM2.gguf 64 -- --draft-model models/smollm2-draft.gguf
set -euo pipefail
model=$1; n=${2:-64}; shift 2; [ "${1:-}" = "--" ] && shift
wick=${WICK:-target/release/wick}
# BENCH_FLAGS go to both runs (e.g. BENCH_FLAGS=--gpu).
read -r -a common <<<"${BENCH_FLAGS:-}"
prompts=(
  "What is the capital of France?" "Explain why the sky is blue." "Write a haiku about autumn."
  "How do I boil an egg?" "What is photosynthesis?" "Give me three tips for better sleep."
  "What does a CPU do?" "Tell me a short story about a dragon." "How many legs does a spider have?"
  "What is the difference between weather and climate?" "Translate 'good morning' into Spanish."
  "Why do cats purr?" "What is 12 times 7?" "Describe the water cycle." "What are prime numbers?"
  "Suggest a name for a pet goldfish." "How does a rainbow form?"
  "What is the tallest mountain on Earth?" "Write a limerick about a frog."
  "What should I pack for a beach trip?"
)
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
tot_plain=0; tot_spec=0; drafted=0; accepted=0; verif=0; plain_steps=0; produced=0
printf '%-4s %10s %10s %7s %6s\n' "#" "plain t/s" "spec t/s" "ratio" "alpha"
for i in "${!prompts[@]}"; do
  p=${prompts[$i]}
  a=$("$wick" gen -m "$model" --chat -p "$p" -n "$n" --temp 0 --json "${common[@]}" </dev/null 2>/dev/null)
  b=$("$wick" gen -m "$model" --chat -p "$p" -n "$n" --temp 0 --json --stats "${common[@]}" "$@" \
    </dev/null 2>/tmp/bench-spec.err)
  ta=$(field decode_ms <<<"$a"); tb=$(field decode_ms <<<"$b")
  ga=$(field generated_tokens <<<"$a"); gb=$(field generated_tokens <<<"$b")
  [ "$(sed 's/"timings".*//' <<<"$a")" = "$(sed 's/"timings".*//' <<<"$b")" ] || echo "prompt $i: outputs differ" >&2
  s=$(grep '^speculation:' /tmp/bench-spec.err)
  d=$(sed -n 's/^speculation: \([0-9]*\) drafted.*/\1/p' <<<"$s")
  acc=$(sed -n 's/.* drafted, \([0-9]*\) accepted.*/\1/p' <<<"$s")
  v=$(sed -n 's/.*(\([0-9]*\) verifications.*/\1/p' <<<"$s")
  ps=$(sed -n 's/.* verifications, \([0-9]*\) plain steps.*/\1/p' <<<"$s")
  ra=$(awk -v g="$ga" -v t="$ta" 'BEGIN{print (g-1)/t*1000}')
  rb=$(awk -v g="$gb" -v t="$tb" 'BEGIN{print (g-1)/t*1000}')
  printf '%-4s %10.1f %10.1f %7.3f %6.3f\n' "$i" "$ra" "$rb" "$(awk -v a="$ra" -v b="$rb" 'BEGIN{print b/a}')" \
    "$(awk -v a="$acc" -v d="$d" 'BEGIN{print d ? a/d : 0}')"
  tot_plain=$(awk -v x="$tot_plain" -v t="$ta" 'BEGIN{print x+t}')
  tot_spec=$(awk -v x="$tot_spec" -v t="$tb" 'BEGIN{print x+t}')
  produced=$((produced + gb - 1)); drafted=$((drafted + d)); accepted=$((accepted + acc))
  verif=$((verif + v)); plain_steps=$((plain_steps + ps))
done
awk -v tp="$tot_plain" -v ts="$tot_spec" -v n="$produced" -v d="$drafted" -v a="$accepted" \
    -v v="$verif" -v ps="$plain_steps" 'BEGIN{
  printf "total: plain %.1f tok/s, speculative %.1f tok/s, speedup %.3f\n", n/tp*1000, n/ts*1000, tp/ts
  printf "alpha %.3f; drafted per verification k = %.2f; accepted per verification %.2f;\n", a/d, d/v, a/v
  printf "tokens per verification %.2f; %d verifications, %d plain steps\n", (a+v)/v, v, ps }'
