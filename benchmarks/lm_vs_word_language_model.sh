#!/usr/bin/env bash
# The LSTM language model's training throughput against PyTorch's word_language_model
# example, side by side on this machine, at an equal step, per FLOP (issue 15, item 3).
#
#   bash benchmarks/lm_vs_word_language_model.sh EXAMPLES [ROUNDS] [THREADS]
#
# EXAMPLES: a checkout of github.com/pytorch/examples (its word_language_model/ is run
# as it is; nothing of it is copied here). ROUNDS (default 2) alternates the two, so a
# busy stretch of the machine hits both; THREADS (default 2) OpenMP threads for each.
#
# The equal step: both train the 2 x 200 LSTM on 200-wide embeddings, bptt 35, batch 20,
# dropout 0.2 (embeddings, between layers, output), gradients clipped to norm 0.25, plain
# SGD. Both get glibc's allocator setting: ours calls mallopt itself
# (tdiag.devices.retain_freed_host_memory), the example gets the same thresholds from
# MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_. Both read the offline WikiText-2 mirror;
# the example builds its vocabulary from all three files, ours from the training file, so
# their output layers differ and the comparison is per FLOP: tokens/s x 6 N, N the
# parameters of the matrix products (LSTM and output layer; embeddings are looked up).
#
# The example's ms/batch is its own log line (every 50 batches; the first interval is its
# warm-up and is left out); ours is benchmarks/lm_throughput.py's median step.
set -euo pipefail
EXAMPLES=$(cd "${1:?usage: $0 EXAMPLES [ROUNDS] [THREADS]}" && pwd)
ROUNDS=${2:-2}
THREADS=${3:-2}
cd "$(dirname "$0")/.."
MIRROR=${TDIAG_DATA_MIRROR:-$(cd .. && pwd)/shared/data}/wikitext-2-mini
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/data"
for split in train valid test; do ln -s "$MIRROR/wiki.$split.tokens" "$WORK/data/$split.txt"; done
PY=${PYTHON:-python}

# N of each: the LSTM's 2 layers (4H(I + H) + 8H each) and an output layer of H x V + V.
read -r ours_vocab example_vocab < <("$PY" - "$MIRROR" <<'EOF'
import sys
from pathlib import Path
words = {s: {w for line in (Path(sys.argv[1]) / f"wiki.{s}.tokens").open() for w in line.split() + ["<eos>"]}
         for s in ("train", "valid", "test")}
print(len(words["train"]), len(words["train"] | words["valid"] | words["test"]))
EOF
)
n_of() { echo $((2 * (4 * 200 * (200 + 200) + 8 * 200) + 200 * $1 + $1)); }

for round in $(seq "$ROUNDS"); do
    (cd "$WORK" && MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 OMP_NUM_THREADS=$THREADS \
        "$PY" "$EXAMPLES/word_language_model/main.py" --data "$WORK/data" --epochs 1 --log-interval 50 \
        --save "$WORK/model.pt") >"$WORK/example.$round.log" 2>&1
    example_ms=$(grep -o 'ms/batch *[0-9.]*' "$WORK/example.$round.log" | tail -n +2 | awk '{s += $2; n++} END {print s / n}')
    ours=$("$PY" benchmarks/lm_throughput.py --threads "$THREADS" --steps 100 --dropout 0.2 --clip 0.25 --large no \
        --corpus "$MIRROR" | grep '^LSTM')
    ours_ms=$(echo "$ours" | grep -o 'median step *[0-9.]*' | awk '{print $3}')
    "$PY" - "$round" "$example_ms" "$ours_ms" "$(n_of "$example_vocab")" "$(n_of "$ours_vocab")" \
        "$example_vocab" "$ours_vocab" <<'EOF'
import sys
round_, example_ms, ours_ms, example_n, ours_n, example_v, ours_v = sys.argv[1:]
tokens = 20 * 35
example, ours = tokens / float(example_ms) * 1000, tokens / float(ours_ms) * 1000
per_flop = ours * int(ours_n) / (example * int(example_n))
print(f"round {round_}: word_language_model {float(example_ms):6.1f} ms/batch = {example:6.0f} tokens/s "
      f"(vocabulary {int(example_v):,}, N {int(example_n):,}); ours {float(ours_ms):6.1f} ms/step = {ours:6.0f} "
      f"tokens/s (vocabulary {int(ours_v):,}, N {int(ours_n):,}); ours per FLOP: {per_flop:.2f}x")
EOF
done
