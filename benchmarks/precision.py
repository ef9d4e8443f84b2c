"""float32 against bfloat16 on this machine, side by side: what `dtype: auto` buys where the CPU has
native bf16 (AVX512-BF16 / AMX) and what it costs where it has not.

    .venv/bin/python -m benchmarks.precision                    # matmul, vLLM sampling, DPO step; 2 repeats
    .venv/bin/python -m benchmarks.precision --parts step --repeats 3

Each measurement of a side runs in its own process (vLLM and accelerate keep per-process state), the
sides alternate (f32, bf16, f32, bf16, ...), and the figures are medians over the repeats:
1. matmul: SmolLM2-135M's MLP shapes (2,400 tokens x 576 x 1,536), 10 timed products after 3 warm-ups;
2. sampling: vLLM offline on the embedded SmolLM2, 64 seed prompts (with an instruction) x 4 samples
   at temperature 1 and then one greedy answer each, 256 new tokens (the demo's sampling shape);
   engine start-up is timed apart;
3. step: prefmill's DPO step (completion-only head, reference log-probs precomputed; batch 8,
   max_length 384, demo-like pairs of 20-200 words, benchmarks/training.py's pairs), the
   precompute ("setup") and 4 steps after one warm-up, bfloat16 as CPU autocast.
Prints whether the CPU has native bf16, the load average, every run, and last
`bf16_speedup: matmul X.XX, sampling Y.YY, step Z.ZZ` (float32 median time / bfloat16 median time).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("matmul", "sampling", "step")
DTYPES = ("float32", "bfloat16")


def run_matmul(dtype: str) -> dict:
    import torch

    torch.manual_seed(0)
    a, b = torch.randn(2400, 576).to(getattr(torch, dtype)), torch.randn(576, 1536).to(getattr(torch, dtype))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    return {"s": s, "gflops": 2 * 2400 * 576 * 1536 / s / 1e9}


def run_sampling(dtype: str) -> dict:
    from generators.backends.base import Sampling
    from generators.backends.vllm_offline import VLLMBackend
    from generators.models.registry import resolve_model

    prompts = [json.loads(x)["prompt"] for x in (ROOT / "recipes/data/seed_prompts.jsonl").read_text().splitlines()
               if x.strip()][:64]
    convs = [[{"role": "user", "content": f"{p} Answer in at most 50 words."}] for p in prompts]
    t0 = time.perf_counter()
    be = VLLMBackend(resolve_model("smollm2"), dtype=dtype)
    be.load()
    start = time.perf_counter() - t0
    t = time.perf_counter()
    out = be.generate(convs, Sampling(n=4, temperature=1.0, max_tokens=256, seed=0))
    sample_s = time.perf_counter() - t
    t = time.perf_counter()
    greedy = be.generate(convs, Sampling(n=1, temperature=0.0, max_tokens=256))
    greedy_s = time.perf_counter() - t
    tokens = sum(c.completion_tokens for row in out for c in row)
    g_tokens = sum(c.completion_tokens for row in greedy for c in row)
    be.close()
    return {"s": sample_s + greedy_s, "start_s": start, "sample_s": sample_s, "greedy_s": greedy_s,
            "tokens": tokens + g_tokens, "tok_per_s": (tokens + g_tokens) / (sample_s + greedy_s)}


def run_step(dtype: str) -> dict:
    import tempfile

    from benchmarks.training import Stepper, demo_pairs
    from generators.models.registry import resolve_model
    from trainers.config import PreferenceConfig
    from trainers.dataset import preference_dataset
    from trainers.dpo import build_preference_trainer

    steps = 5
    policy = resolve_model("smollm2")
    cfg = PreferenceConfig(loss="sigmoid", beta=0.1, learning_rate=5e-5, batch_size=8, max_length=384,
                           max_steps=steps, dtype=dtype)
    frame = demo_pairs(steps * 8, seed=0)
    work = Path(tempfile.mkdtemp(prefix="prefmill-bench-precision-"))
    s = Stepper(lambda: build_preference_trainer(policy=policy, dataset=preference_dataset(frame), config=cfg,
                                                 output_dir=work, reference=policy), steps)
    for _ in range(steps):
        s.step()
    return {"s": statistics.median(s.wall[1:]), "setup_s": s.setup_s, "steps": s.wall}


def child(part: str, dtype: str) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # the engine in this process, as the CLI runs it
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    res = {"matmul": run_matmul, "sampling": run_sampling, "step": run_step}[part](dtype)
    print("RESULT " + json.dumps(res), flush=True)


def measure(part: str, dtype: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "benchmarks.precision", "--child", part, dtype], cwd=ROOT,
                       capture_output=True, text=True)
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not lines:
        raise SystemExit(f"error: the {part} run in {dtype} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--repeats", type=int, default=2, help="runs per side and part (alternating)")
    ap.add_argument("--child", nargs=2, metavar=("PART", "DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(*a.child)
    from generators.backends.precision import cpu_native_bf16

    print(f"cpu native bf16: {cpu_native_bf16()}; {os.cpu_count()} cpus; "
          f"load average {' '.join('%.1f' % x for x in os.getloadavg())}", flush=True)
    medians: dict[str, dict[str, float]] = {}
    for part in a.parts:
        runs: dict[str, list[dict]] = {d: [] for d in DTYPES}
        for _ in range(a.repeats):
            for d in DTYPES:
                r = measure(part, d)
                runs[d].append(r)
                extra = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "steps"}
                print(f"  {part} {d}: {extra}", flush=True)
        medians[part] = {d: statistics.median(r["s"] for r in runs[d]) for d in DTYPES}
        xs = {d: [r["s"] for r in runs[d]] for d in DTYPES}
        print(f"{part}: float32 {medians[part]['float32']:.3f} s [{min(xs['float32']):.3f}-{max(xs['float32']):.3f}], "
              f"bfloat16 {medians[part]['bfloat16']:.3f} s [{min(xs['bfloat16']):.3f}-{max(xs['bfloat16']):.3f}], "
              f"n={a.repeats}: {medians[part]['float32'] / medians[part]['bfloat16']:.2f}x", flush=True)
    print(f"load average {' '.join('%.1f' % x for x in os.getloadavg())}")
    ratio = {p: m["float32"] / m["bfloat16"] for p, m in medians.items()}
    print("bf16_speedup: " + ", ".join(f"{p} {r:.2f}" for p, r in ratio.items()))


if __name__ == "__main__":
    main()
