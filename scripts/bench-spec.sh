#!/usr/bin/env bash
# Speculative decoding on 20 chat prompts at temperature 0: decode speed of the model alone
# and with speculation, acceptance, and drafted tokens per verification, per prompt and in
# total. Usage: scripts/bench-spec.sh MODEL [N_TOKENS] -- SPECULATION FLAGS...
# e.g. scripts/bench-spec.sh SmolLM2.gguf 64 -- --draft-model models/smollm2-draft.gguf
#
# Each prompt runs REPEAT times (default 3) alone and with speculation, in alternating
# order (plain first in odd rounds, speculative first in even ones), and each side's time
# is the median of its runs. A prompt's ratio is the median of its rounds' ratios, each
# from two runs back to back: one short run varies by more than the 3 % that the
# per-prompt comparison has to resolve (a GPU's clocks, a VM's memory bandwidth).
set -euo pipefail
model=$1; n=${2:-64}; shift 2; [ "${1:-}" = "--" ] && shift
wick=${WICK:-target/release/wick}
reps=${REPEAT:-3}
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
err=$(mktemp); trap 'rm -f "$err"' EXIT
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END{print NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
plain() { "$wick" gen -m "$model" --chat -p "$1" -n "$n" --temp 0 --json "${common[@]}" </dev/null 2>/dev/null; }
spec() {
  "$wick" gen -m "$model" --chat -p "$1" -n "$n" --temp 0 --json --stats "${common[@]}" "${flags[@]}" \
    </dev/null 2>"$err"
}
flags=("$@")
tot_plain=0; tot_spec=0; drafted=0; accepted=0; verif=0; plain_steps=0; produced=0; worst=9
printf '%-4s %10s %10s %7s %6s  %s\n' "#" "plain t/s" "spec t/s" "ratio" "alpha" "ratios of the rounds"
for i in "${!prompts[@]}"; do
  p=${prompts[$i]}
  ta_all=""; tb_all=""; rounds=""
  for r in $(seq 1 "$reps"); do
    if [ $((r % 2)) = 1 ]; then a=$(plain "$p"); b=$(spec "$p"); else b=$(spec "$p"); a=$(plain "$p"); fi
    ta=$(field decode_ms <<<"$a"); tb=$(field decode_ms <<<"$b")
    ta_all="$ta_all $ta"; tb_all="$tb_all $tb"
    rounds="$rounds $(awk -v a="$ta" -v b="$tb" 'BEGIN{printf "%.3f", a/b}')"
    [ "$(sed 's/"timings".*//' <<<"$a")" = "$(sed 's/"timings".*//' <<<"$b")" ] ||
      echo "prompt $i round $r: outputs differ" >&2
    if [ "$r" = 1 ]; then
      # Counts from the first speculative run (timings decide drafting, so runs may differ).
      ga=$(field generated_tokens <<<"$a"); gb=$(field generated_tokens <<<"$b")
      s=$(grep '^speculation:' "$err")
      d=$(sed -n 's/^speculation: \([0-9]*\) drafted.*/\1/p' <<<"$s")
      acc=$(sed -n 's/.* drafted, \([0-9]*\) accepted.*/\1/p' <<<"$s")
      v=$(sed -n 's/.*(\([0-9]*\) verifications.*/\1/p' <<<"$s")
      ps=$(sed -n 's/.* verifications, \([0-9]*\) plain steps.*/\1/p' <<<"$s")
    fi
  done
  ta=$(median <<<"$ta_all"); tb=$(median <<<"$tb_all")
  ra=$(awk -v g="$ga" -v t="$ta" 'BEGIN{print (g-1)/t*1000}')
  rb=$(awk -v g="$gb" -v t="$tb" 'BEGIN{print (g-1)/t*1000}')
  ratio=$(median <<<"$rounds")
  worst=$(awk -v w="$worst" -v x="$ratio" 'BEGIN{print x < w ? x : w}')
  printf '%-4s %10.1f %10.1f %7.3f %6.3f %s\n' "$i" "$ra" "$rb" "$ratio" \
    "$(awk -v a="$acc" -v d="$d" 'BEGIN{print d ? a/d : 0}')" "$rounds"
  tot_plain=$(awk -v x="$tot_plain" -v t="$ta" 'BEGIN{print x+t}')
  tot_spec=$(awk -v x="$tot_spec" -v t="$tb" 'BEGIN{print x+t}')
  produced=$((produced + gb - 1)); drafted=$((drafted + d)); accepted=$((accepted + acc))
  verif=$((verif + v)); plain_steps=$((plain_steps + ps))
done
awk -v tp="$tot_plain" -v ts="$tot_spec" -v n="$produced" -v d="$drafted" -v a="$accepted" \
    -v v="$verif" -v ps="$plain_steps" -v w="$worst" -v r="$reps" 'BEGIN{
  printf "total (medians of %d rounds): plain %.1f tok/s, speculative %.1f tok/s, speedup %.3f; lowest prompt %.3f\n", r, n/tp*1000, n/ts*1000, tp/ts, w
  printf "alpha %.3f; drafted per verification k = %.2f; accepted per verification %.2f;\n", d ? a/d : 0, v ? d/v : 0, v ? a/v : 0
  printf "tokens per verification %.2f; %d verifications, %d plain steps\n", v ? (a+v)/v : 0, v, ps }'
