#!/usr/bin/env bash
# Which transformers versions robustedit works with (pyproject's range, docs/notes/issue-20.md).
# For each version: a fresh venv (torch==2.13.0 first: the CPU build from this machine's disk), the
# project's dependencies with that transformers, and a fresh ROBUSTEDIT_CACHE so that the embedded
# model's GGUF -> safetensors conversion (and its tokenizer, which <5.18 gets wrong) runs under it;
# then the tokenizer and ROME edit tests on SmolLM2 and four unit-test files.
#
#   benchmarks/transformers_range.sh 5.18.0 5.25.0      # ~10 min per version on 2 cores
set -uo pipefail
cd "$(dirname "$0")/.."
for V in "$@"; do
  venv=/tmp/tf-$V cache=/tmp/tfcache-$V
  rm -rf "$venv" "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch==2.13.0
  # the project's own pin would refuse another transformers: its other dependencies, then it without deps
  "$venv/bin/pip" install --quiet "transformers==$V" safetensors numpy pyyaml typer rich tqdm matplotlib accelerate gguf scikit-learn pytest
  "$venv/bin/pip" install --quiet --no-deps -e .
  echo "== transformers $V"
  ROBUSTEDIT_CACHE=$cache OMP_NUM_THREADS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/integration/test_smollm2.py -k "tokenizer or rome_edit_changes" | tail -1
  ROBUSTEDIT_CACHE=$cache OMP_NUM_THREADS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/unit/test_architectures.py tests/unit/test_rome.py tests/unit/test_memit.py tests/unit/test_embedded.py | tail -1
  rm -rf "$venv" "$cache"
done
