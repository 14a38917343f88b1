#!/usr/bin/env bash
# GPU checks for the day a device is lent (issue 14, item 4; issue 15, item 5): one
# script, at most 10 minutes on one GPU, one summary at the end.
#
#   1. pytest -m gpu            the test files that carry the `gpu` marker
#   2. LM throughput            benchmarks/lm_throughput.py in fp32 and bf16: tokens/s and
#                               MFU against the datasheet peak it names, with the
#                               GPU-sized GPT (d768, 12 layers, T 1,024) and its op profile;
#                               then bf16 again with the forward compiled (--compile default)
#   3. attention memory         benchmarks/attention_memory.py: sdpa vs manual, peak memory
#                               and step time at 1,024 tokens, fp32 and bf16
#   4. full-scale toy run       `tdiag --set scale=full data synth copy` then
#                               `train toy copy` in a temporary folder, its summary.json
#   5. lab GPU paths            the lab's checkpointing, precision and attention_length
#                               cells at full scale (issue 12: experiments 3, 5, 6), one
#                               line each: status, median step, saved bytes, peak memory
#   6. DDP                      with 2 GPUs or more: toy copy on 2 NCCL processes vs 1,
#                               the largest per-step loss difference; else skipped
#
# Every check runs under its own `timeout`, and the sum of the budgets stays inside
# GPU_CHECK_BUDGET_S (default 560 s), so the script ends within 10 minutes whatever hangs;
# a failed or timed-out check is reported and the next one still runs.
#
# The GPU machine has its own python3 and PyTorch and no network, and the project pins
# another torch, so the project is not installed there: it runs from source
# (PYTHONPATH=src). The pure-Python packages that machine lacks travel as wheels in
# .whl/, and the WikiText-2 mirror as .gpu-data/wikitext-2-mini/; fill both here first,
# from the project's environment:
#
#   bash benchmarks/fetch_gpu_wheels.sh
#
# then run on the device machine, naming both folders in `carry`:
#
#   bash benchmarks/gpu_check.sh
#
# The wheels are installed (into /tmp/site, first on PYTHONPATH) only where pydantic,
# sacremoses or subword-nmt cannot be imported. Logs: one file per check and
# gpu_check_summary.txt, under $OUT when it is set (at most 8 files), else in a
# temporary folder the summary names.
#
# Without CUDA, or with GPU_CHECK_QUICK=1, every check runs at a small size (a few
# minutes on 2 CPU cores), to test the script itself; those figures mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
START=$SECONDS
TOTAL=${GPU_CHECK_BUDGET_S:-560}
LOGS=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$LOGS" && LOGS=$(cd "$LOGS" && pwd)
SUMMARY=$LOGS/gpu_check_summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1

note() { echo "$*" | tee -a "$SUMMARY"; }

# budget SECONDS: that many, or what is left of TOTAL if less (at least 1).
budget() {
    local left=$((TOTAL - (SECONDS - START)))
    local b=$(($1 < left ? $1 : left))
    echo $((b > 1 ? b : 1))
}

# check NAME SECONDS LOG COMMAND...: run it under `timeout`, record its status.
check() {
    local name=$1 seconds log=$LOGS/$3
    seconds=$(budget "$2")
    shift 3
    local began=$SECONDS
    echo "== $name (budget ${seconds} s): $*" | tee -a "$log"
    timeout --kill-after=10 "$seconds" "$@" >>"$log" 2>&1
    local rc=$?
    local status="ok"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        status="TIMED OUT after ${seconds} s"
    elif [ $rc -ne 0 ]; then
        status="FAILED (exit $rc)"
    fi
    note ""
    note "## $name: $status, $((SECONDS - began)) s, log $log"
    return $rc
}

# ------------------------------------------------------------------ environment
ENV_LOG=$LOGS/environment.log
{
    date -u +"%F %T UTC"
    git -C "$ROOT" log -1 --format="commit %h %s" 2>/dev/null
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
} >"$ENV_LOG"

if ! "$PY" -c "import pydantic, sacremoses, subword_nmt" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl >>"$ENV_LOG" 2>&1 || echo "installing .whl failed" | tee -a "$ENV_LOG"
        SITE=/tmp/site:
    else
        echo "pydantic, sacremoses or subword-nmt is missing and there is no .whl/: run benchmarks/fetch_gpu_wheels.sh" \
            | tee -a "$ENV_LOG"
    fi
fi
export PYTHONPATH="${SITE:-}$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>>"$ENV_LOG" || echo 0)
QUICK=${GPU_CHECK_QUICK:-$((1 - CUDA))}
"$PY" - >>"$ENV_LOG" 2>&1 <<'EOF'
import sys, torch, tdiag, pydantic
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"pydantic {pydantic.VERSION}, tdiag from {tdiag.__file__}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
              f"capability {p.major}.{p.minor}")
EOF
note "# GPU check: $(date -u +'%F %T UTC'), commit $(git -C "$ROOT" log -1 --format=%h 2>/dev/null || echo unknown)"
note "$(grep -E '^(python|cuda:)' "$ENV_LOG")"
[ "$QUICK" = 1 ] && note "QUICK mode (no CUDA or GPU_CHECK_QUICK=1): small sizes, figures test the script only"

# ------------------------------------------------------------------ 1. pytest -m gpu
# Only the files that carry the marker are collected: collecting every test module
# would import packages the GPU machine lacks (snakemake, dvc, papermill, ...).
GPU_TESTS=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
check "pytest -m gpu" 100 pytest.log "$PY" -m pytest -m gpu -p no:cacheprovider -o addopts="" -q -rs $GPU_TESTS
note "$(grep -E '(passed|failed|skipped|error)' "$LOGS/pytest.log" | tail -1)"

# ------------------------------------------------------------------ 2. LM throughput
CORPUS=""
for folder in .gpu-data/wikitext-2-mini ../shared/data/wikitext-2-mini; do
    [ -f "$folder/wiki.train.tokens" ] && CORPUS=$folder && break
done
if [ -z "$CORPUS" ]; then
    note ""
    note "## LM throughput: SKIPPED, no .gpu-data/wikitext-2-mini (benchmarks/fetch_gpu_wheels.sh makes it)"
else
    if [ "$QUICK" = 1 ]; then
        SIZE=(--steps 3 --warmup 1 --large yes --large-layers 1 --large-batch 2 --large-seq 128 --large-steps 2)
    else
        SIZE=(--steps 30 --warmup 3 --large yes --large-steps 15)
    fi
    check "LM throughput" 120 lm_throughput.log "$PY" benchmarks/lm_throughput.py --corpus "$CORPUS" \
        --precision fp32 bf16 --profile "${SIZE[@]}"
    note "$(grep -E '^(device|fp32:|bf16:|LSTM|GPT)' "$LOGS/lm_throughput.log")"
    note "$(awk '/^profile of/ {on = 1} /^GPT d768/ {on = 0} on && !/^USDT/' "$LOGS/lm_throughput.log")"
    # The same in bf16 with the forward compiled (train.compile: default): MFU against eager's.
    check "LM throughput, compiled" 90 lm_compiled.log "$PY" benchmarks/lm_throughput.py --corpus "$CORPUS" \
        --precision bf16 --compile default "${SIZE[@]}"
    note "$(grep -E '^(device|bf16:|LSTM|GPT)' "$LOGS/lm_compiled.log")"
fi

# ------------------------------------------------------------------ 3. attention memory
if [ "$QUICK" = 1 ]; then
    SIZE=(--seq-len 128 --batch 2 --layers 1 --d-model 64 --heads 2 --vocab 512 --steps 3 --warmup 1)
else
    SIZE=(--seq-len 1024 --batch 8 --layers 12 --steps 10 --warmup 3)
fi
check "SDPA vs manual attention" 60 attention_memory.log "$PY" benchmarks/attention_memory.py "${SIZE[@]}"
note "$(grep -E '^(device|sdpa|manual)' "$LOGS/attention_memory.log")"

# ------------------------------------------------------------------ 4. full-scale toy run
# The pipeline writes results/ under the working folder: run it in a temporary one.
TOY=$(mktemp -d /tmp/gpu_check_toy.XXXXXX)
cp params.yaml "$TOY/"
if [ "$QUICK" = 1 ]; then
    SCALE=(--set scale=smoke --set scales.smoke.studies.toy.train.max_steps=60
           --set scales.smoke.studies.toy.train.eval_every=20)
    TOY_RUN="toy run at smoke scale, 60 steps (toy/copy)"
else
    SCALE=(--set scale=full)
    TOY_RUN="full-scale toy run (toy/copy)"
fi
(cd "$TOY" && check "toy data (copy)" 30 toy_run.log "$PY" -m tdiag "${SCALE[@]}" data synth copy) \
    && (cd "$TOY" && check "$TOY_RUN" 170 toy_run.log "$PY" -m tdiag "${SCALE[@]}" train toy copy)
"$PY" - "$TOY/results/runs/toy/copy" >>"$LOGS/toy_run.log" 2>&1 <<'EOF'
"""One line per seed from seed-*/summary.json (also after a timeout), then the run's own."""
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
for folder in sorted(run.glob("seed-*")):
    summary = folder / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        print(f"toy/copy {folder.name}: {s['status']}, {s['steps']} of {s['max_steps']} steps, "
              f"{s['wall_seconds']:.1f} s, {s['steps'] / s['wall_seconds']:.1f} steps/s (evaluations included), "
              f"test exact match {s['test']['exact_match']:.3f}, device {s['device']}, "
              f"peak memory {s['peak_memory_bytes'] / 2**20:.1f} MiB")
        continue
    steps = [json.loads(line).get("step") for line in (folder / "metrics.jsonl").open()] \
        if (folder / "metrics.jsonl").is_file() else []
    print(f"toy/copy {folder.name}: unfinished, last logged step {max((s for s in steps if s), default=0)}")
summary = run / "summary.json"
if summary.is_file():
    s = json.loads(summary.read_text())
    print(f"toy/copy run: {s['status']}, {len(s['per_seed'])} seeds, wall {s['wall_seconds']:.1f} s, "
          f"test exact match {s['test'].get('exact_match')}")
else:
    print("toy/copy run: no summary.json (the run did not finish)")
EOF
note "$(grep -E '^toy/copy' "$LOGS/toy_run.log")"
rm -rf "$TOY"

# ------------------------------------------------------------------ 5. lab GPU paths
# Experiments 3, 5 and 6 of the lab (activation checkpointing, precision, attention vs
# context): their cells at full scale, on the mirror's WikiText-2, in a temporary folder.
LAB=$(mktemp -d /tmp/gpu_check_lab.XXXXXX)
cp params.yaml "$LAB/"
if [ "$QUICK" = 1 ]; then
    LAB_SCALE=(--set scale=smoke)
else
    LAB_SCALE=(--set scale=full)
fi
LAB_RUNS=$("$PY" -m tdiag --params "$LAB/params.yaml" stages 2>/dev/null \
    | grep -oE 'train lab (checkpointing|precision|attention_length)-[0-9]+' | awk '{print $3}' | tr '\n' ' ')
if [ -z "$CORPUS" ]; then
    note ""
    note "## lab GPU paths: SKIPPED, no .gpu-data/wikitext-2-mini (benchmarks/fetch_gpu_wheels.sh makes it)"
else
    MIRROR=$(cd "$(dirname "$CORPUS")" && pwd)
    LAB_SCALE+=(--set "data.mirror=$MIRROR")
    # shellcheck disable=SC2016
    (cd "$LAB" && check "lab data (wikitext2)" 60 lab.log bash -c '"$0" -m tdiag "$@" data fetch wikitext2 &&
        "$0" -m tdiag "$@" data prepare wikitext2' "$PY" "${LAB_SCALE[@]}") \
    && (cd "$LAB" && check "lab cells: $LAB_RUNS" 180 lab.log bash -c \
        'py=$1; shift; runs=$1; shift; for run in $runs; do "$py" -m tdiag "$@" train lab "$run" || exit 1; done' \
        _ "$PY" "$LAB_RUNS" "${LAB_SCALE[@]}")
    # shellcheck disable=SC2086
    "$PY" - "$LAB/results/runs/lab" $LAB_RUNS >>"$LOGS/lab.log" 2>&1 <<'EOF'
"""One line per lab cell from its summary.json and metrics.jsonl (also after a timeout)."""
import json, statistics, sys
from pathlib import Path

root = Path(sys.argv[1])
for run in sys.argv[2:]:
    summary = root / run / "summary.json"
    if not summary.is_file():
        print(f"lab/{run}: no summary.json (not run or not finished)")
        continue
    s = json.loads(summary.read_text())
    if s["status"] == "unsupported":
        print(f"lab/{run}: unsupported: {s['reason']}")
        continue
    seed = s["per_seed"][0]
    folder = root / run / f"seed-{seed['seed']}"
    config = json.loads((folder / "config.json").read_text())["config"]
    train = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    train = [r for r in train if r.get("kind") == "train"]
    print(f"lab/{run}: {s['status']}, attention {config['model']['attention']}, checkpointing "
          f"{config['model']['checkpointing']}, {config['train']['precision']}, T {config['train']['bptt']} x "
          f"{config['train']['batch_size']}, median step {1000 * statistics.median(r['step_time'] for r in train):.1f} ms, "
          f"saved {statistics.median(r['saved_bytes'] for r in train) / 2**20:.1f} MiB/step, "
          f"peak {seed['peak_memory_bytes'] / 2**20:.1f} MiB ({seed['memory_measure']}), "
          f"valid loss {(s['valid'] or {}).get('loss')}")
EOF
    note "$(grep -E '^lab/' "$LOGS/lab.log")"
fi
rm -rf "$LAB"

# ------------------------------------------------------------------ 6. DDP
# Two NCCL processes (train.devices: 2, started by `tdiag train` through torchrun) against
# one process, the same toy run at smoke size: per-step losses must agree within fp32
# rounding. Without 2 GPUs: skipped (tests/test_distributed.py covers the gloo path on CPUs).
N_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${N_GPUS:-0}" -ge 2 ]; then
    DDP=$(mktemp -d /tmp/gpu_check_ddp.XXXXXX)
    cp params.yaml "$DDP/"
    DDP_SET=(--set scale=smoke)  # one seed, 400 steps
    (cd "$DDP" && check "2-process DDP (toy copy at smoke size, 1 vs 2 GPUs)" 90 ddp.log bash -c \
        '"$0" -m tdiag "$@" data synth copy && "$0" -m tdiag "$@" train toy copy && mv results/runs/toy/copy one &&
         "$0" -m tdiag "$@" --set studies.toy.runs.copy.train.devices=2 train toy copy' "$PY" "${DDP_SET[@]}")
    "$PY" - "$DDP" >>"$LOGS/ddp.log" 2>&1 <<'EOF'
"""The largest per-step loss difference between the 1- and 2-process runs."""
import json, sys
from pathlib import Path

root = Path(sys.argv[1])


def losses(folder):
    lines = (folder / "seed-0" / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


try:
    one, two = losses(root / "one"), losses(root / "results/runs/toy/copy")
    diff = [abs(a - b) for a, b in zip(one, two)]
    print(f"ddp: {len(two)} steps on 2 GPUs vs {len(one)} on 1, largest loss difference {max(diff[:10]):.2e} "
          f"over the first 10 steps, {max(diff):.2e} over all (rounding differences grow as training goes on)")
except (OSError, ValueError) as err:
    print(f"ddp: no comparison ({err})")
EOF
    note "$(grep -E '^ddp:' "$LOGS/ddp.log")"
    rm -rf "$DDP"
else
    note ""
    note "## 2-process DDP: SKIPPED, the machine has ${N_GPUS:-0} GPU(s) (< 2); tests/test_distributed.py runs 2 gloo processes on the CPU"
fi

note ""
note "# total $((SECONDS - START)) s (budget ${TOTAL} s); logs in $LOGS"
echo
echo "================================ SUMMARY ================================"
cat "$SUMMARY"
