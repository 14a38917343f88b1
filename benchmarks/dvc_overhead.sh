#!/usr/bin/env bash
# DVC's own time on a finished project: `dvc status` and a `dvc repro` with nothing to
# do, each timed ROUNDS times, interleaved. Run it in a project where the pipeline has
# run (dvc.lock up to date), from the project's virtual environment:
#   benchmarks/dvc_overhead.sh [ROUNDS]
# It prints one line per command and round, then which YAML parser DVC's loader has.
set -euo pipefail
rounds=${1:-3}
for round in $(seq "$rounds"); do
    for cmd in "status" "repro"; do
        start=$EPOCHREALTIME
        out=$(dvc $cmd 2>&1)
        end=$EPOCHREALTIME
        case "$out" in
            *"up to date"*) ;;
            *) echo "dvc $cmd found work to do: run the pipeline first" >&2; exit 1 ;;
        esac
        printf 'round %s  dvc %-6s %6.1f s\n' "$round" "$cmd" "$(awk "BEGIN {print $end - $start}")"
    done
done
printf 'dvc.lock: %s lines; deps and outs listed: %s; ruamel safe parser: %s\n' "$(wc -l < dvc.lock)" \
    "$(grep -c '^    - path:' dvc.lock || true)" \
    "$(python -c 'from ruamel.yaml import YAML; print(YAML(typ="safe").Parser.__name__)')"
