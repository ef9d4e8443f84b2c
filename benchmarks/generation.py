"""Generation overhead: the sampling stage through prefmill (store, keys, batching, commits,
lineage) against raw `vllm.LLM.chat` on the same prompts, params and engine, in one run.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python benchmarks/generation.py [--models tiny,smollm2]

Per model: one engine; a warm-up pass over every prompt (so both sides see a warm prefix cache);
then raw and prefmill runs alternate `--reps` times; throughput = completion tokens / wall
seconds; efficiency = median over reps of (prefmill run / the raw run just before it), which
cancels slow drifts in machine load. Also the cost per prompt of n=8 vs n=1 through the stage.
Last line: `generation_efficiency: X.XX (prefmill tokens/s / raw tokens/s)`, the lowest ratio
over the models measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl  # noqa: E402

SEEDS = Path(__file__).resolve().parents[1] / "recipes" / "data" / "seed_prompts.jsonl"


def _prompts(k: int) -> list[list[dict]]:
    lines = [json.loads(x)["prompt"] for x in SEEDS.read_text().splitlines()][:k]
    return [[{"role": "user", "content": t}] for t in lines]


def _store_with_prompts(root: Path, convs: list[list[dict]]):
    from pipelines.prompts import prompt_row, prompts_frame
    from pipelines.store import Store

    store = Store(root)
    rows = [prompt_row(c, task_type="open_qa", source="bench", heldout_fraction=0.0) for c in convs]
    store.append("prompts", prompts_frame(rows), kind="prompts")
    return store


def _raw(be, convs, sampling) -> tuple[int, float]:
    params = be.sampling_params(sampling)
    t = time.perf_counter()
    outs = be.llm.chat(convs, params, use_tqdm=False)
    dt = time.perf_counter() - t
    return sum(len(c.token_ids) for o in outs for c in o.outputs), dt


def _stage(be, store, cfg, output: str) -> tuple[int, float]:
    from pipelines.sampling import sample_stage

    t = time.perf_counter()
    ref = sample_stage(store, be, cfg, prompts="prompts", output=output)
    dt = time.perf_counter() - t
    return int(store.read(ref, columns=["completion_tokens"])["completion_tokens"].sum()), dt


def bench_model(name: str, path: Path, *, prompts: int, n: int, max_tokens: int, reps: int, batch_size: int) -> dict:
    from generators.backends.vllm_offline import VLLMBackend
    from pipelines.sampling import SamplingStageConfig

    convs = _prompts(prompts)
    be = VLLMBackend(path, model_id=name, max_model_len=1024)
    be.load()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = _store_with_prompts(Path(tmp) / "store", convs)
            cfg = SamplingStageConfig(n=n, temperature=0.8, top_p=0.95, max_tokens=max_tokens, split="all",
                                      batch_size=batch_size)
            sampling = cfg.sampling()
            _raw(be, convs, sampling)                                   # warm-up: prefix cache, kernels
            raw, ours = [], []
            for r in range(reps):
                tok, dt = _raw(be, convs, sampling)
                raw.append((tok / dt, tok, dt))
                tok, dt = _stage(be, store, cfg.model_copy(update={"seed": 100 + r}), f"s{r}")
                ours.append((tok / dt, tok, dt))
            runs: dict[int, list[tuple[int, float]]] = {1: [], 8: []}
            for r in range(reps):                                     # interleaved, like the pairs above
                for k in (1, 8):
                    c = cfg.model_copy(update={"n": k, "seed": 200 + r})
                    runs[k].append(_stage(be, store, c, f"n{k}_{r}"))
            cost = {k: {"s_per_prompt": statistics.median(dt for _, dt in v) / len(convs),
                        "tokens": statistics.median(t for t, _ in v),
                        "tok_per_s": statistics.median(t / dt for t, dt in v)} for k, v in runs.items()}
    finally:
        be.close()
    raw_tps = statistics.median(x[0] for x in raw)
    our_tps = statistics.median(x[0] for x in ours)
    # Paired ratio: each prefmill run against the raw run just before it (same machine load).
    eff = statistics.median(o[0] / r[0] for o, r in zip(ours, raw))
    return {"model": name, "prompts": len(convs), "n": n, "max_tokens": max_tokens, "raw_tok_s": raw_tps,
            "prefmill_tok_s": our_tps, "efficiency": eff, "raw_runs": raw, "prefmill_runs": ours,
            "n8_vs_n1": cost}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2", help="comma list: tiny, smollm2, or model folders")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per stage batch/commit")
    a = ap.parse_args(argv)
    results = []
    for name in a.models.split(","):
        if name == "tiny":
            from generators.models.tiny import build_tiny_llama

            path = build_tiny_llama(Path(tempfile.mkdtemp(prefix="bench-tiny-")), seed=0)
        else:
            from generators.models.registry import resolve_model

            path = resolve_model(name)
        r = bench_model(name, path, prompts=a.prompts, n=a.n, max_tokens=a.max_tokens, reps=a.reps,
                        batch_size=a.batch_size)
        results.append(r)
        c1, c8 = r["n8_vs_n1"][1], r["n8_vs_n1"][8]
        print(f"{name}: {r['prompts']} prompts x n={r['n']}, max_tokens={r['max_tokens']}: "
              f"raw {r['raw_tok_s']:.0f} tok/s, prefmill {r['prefmill_tok_s']:.0f} tok/s, "
              f"efficiency {r['efficiency']:.3f}", flush=True)
        print(f"{name}: runs tok/s raw {[round(x[0]) for x in r['raw_runs']]}, "
              f"prefmill {[round(x[0]) for x in r['prefmill_runs']]}", flush=True)
        print(f"{name}: n=1 {c1['s_per_prompt']:.3f} s/prompt ({c1['tok_per_s']:.0f} tok/s); "
              f"n=8 {c8['s_per_prompt']:.3f} s/prompt ({c8['tok_per_s']:.0f} tok/s); "
              f"n=8 costs {c8['s_per_prompt'] / c1['s_per_prompt']:.2f}x n=1 per prompt for "
              f"{c8['tokens'] / max(c1['tokens'], 1):.1f}x the tokens", flush=True)
    print(json.dumps([{k: v for k, v in r.items() if not k.endswith("_runs")} for r in results], default=str))
    eff = min(r["efficiency"] for r in results)
    print(f"generation_efficiency: {eff:.2f} (prefmill tokens/s / raw tokens/s)")


if __name__ == "__main__":
    main()
