#!/usr/bin/env bash
# Every shipped recipe on the embedded SmolLM2 with --limit N (default 8), one after another,
# each in a fresh store; prints one line per recipe: exit code, wall seconds, the run's last
# summary line. Usage: benchmarks/recipes_smollm2.sh [N] [OUT_DIR]
set -u
N=${1:-8}
OUT=${2:-/tmp/prefmill-recipes-n$N}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
printf "%-16s %4s %8s  %s\n" recipe exit wall_s note
for r in recipes/*.yaml; do
  name=$(basename "$r" .yaml)
  t0=$(date +%s.%N)
  PREFECT_HOME="$OUT/prefect" $PY -m flows.cli run "$r" --limit "$N" --store "$OUT/store-$name" \
    --set report.out="$OUT/report-$name" ${EXTRA_SET:-} >"$OUT/$name.out" 2>"$OUT/$name.err"
  rc=$?
  t1=$(date +%s.%N)
  note=$(grep -E "error:|stopped:|failed:" "$OUT/$name.out" "$OUT/$name.err" | head -1 | cut -c1-150)
  printf "%-16s %4s %8.0f  %s\n" "$name" "$rc" "$(echo "$t1 - $t0" | bc)" "$note"
done
