#!/usr/bin/env bash
# Fill what benchmarks/gpu_check.sh needs on a lent GPU machine that has no network and
# its own PyTorch, so the project is not pip-installed there (it pins another torch):
#
#   .whl/                        wheels of the pure-Python packages tdiag imports that the
#                                machine's image lacks (pydantic and its parts; sacremoses
#                                and subword-nmt, imported by the training CLI's data
#                                kinds), at the versions of the environment this runs in,
#                                for CPython 3.12 on x86-64 Linux
#   .gpu-data/wikitext-2-mini/   a copy of the offline corpus (../shared/data does not
#                                travel to the GPU machine) for benchmarks/lm_throughput.py
#
# Both folders are added to .git/info/exclude: they travel only when named in `carry`.
# Run it from the project's environment (the one `pip install -e ".[dev]"` made):
#
#   bash benchmarks/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions sacremoses subword-nmt)
CORPUS=${CORPUS:-../shared/data/wikitext-2-mini}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for folder in /.whl/ /.gpu-data/; do
    grep -qxF "$folder" "$exclude" 2>/dev/null || echo "$folder" >>"$exclude"
done

rm -rf .whl
mkdir .whl
for name in "${PACKAGES[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$name==$version"
done

if [ -d "$CORPUS" ]; then
    rm -rf .gpu-data/wikitext-2-mini
    mkdir -p .gpu-data
    cp -r "$CORPUS" .gpu-data/wikitext-2-mini
    chmod -R u+w .gpu-data
else
    echo "no corpus at $CORPUS: the LM throughput check will be skipped (set CORPUS=...)" >&2
fi
ls -1 .whl
du -sh .whl .gpu-data 2>/dev/null || true
