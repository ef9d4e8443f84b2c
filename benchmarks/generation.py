"""Generation efficiency: prefmill's sampling path (keys, store commits, lineage) against one raw
`vllm.LLM.chat` over all prompts, same prompts, params and engine, side by side in one run.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python benchmarks/generation.py               # both cases
    python benchmarks/generation.py --cases smollm2 --ours stage,stream --reps 1  # also the minimal loop

Cases (issue 13): `tiny` = 2,048 prompts x n=4 x 64 tokens on a tiny random Llama (always runs to
max_tokens: measures per-request overhead), `smollm2` = 256 prompts x n=4 x up to 96 tokens on
the embedded SmolLM2 (answers end at different lengths: measures the batch tail).

`--ours` picks prefmill's side(s):
- `stage` (default, the headline): `pipelines.sampling.sample_stage` exactly as a recipe runs it,
  batch size and commit interval at their defaults: the stage driver streams every prompt's
  request into `backend.stream()` (the engine stays full across batch boundaries) and a writer
  thread commits the finished samples every 64 prompts or 10 s, then `finish` (target keys,
  lineage).
- `stream`: a minimal loop over `backend.stream()` written in this file (keys first, then
  completions -> rows -> one atomic `StageRun.write` every `--commit-rows` rows or `--commit-s`
  seconds, in the engine's thread, then `StageRun.finish`): what the stage driver must not be
  slower than.
- `bare`: `backend.stream()` alone (no keys, rows or commits): the engine loop against LLM.chat.
- `nocommit`: the stage with a single commit at the end: what the commits during the stream cost.
The "before" figures in docs/benchmarks.md (each batch of 64 prompts drained before the next
starts) came from `--ours stage` run on a snapshot of commit 063531d.

Per case: one engine; a prefill-only pass (max_tokens=1) over every prompt warms the prefix
cache for both sides; then `--reps` reps, each one raw run and one run per prefmill side, raw
first in even reps and last in odd ones. Throughput = completion tokens / wall seconds;
efficiency = median over reps of (prefmill run / the raw run of the same rep). Load averages
are printed: figures taken on a shared machine carry them.
Last line: `generation_efficiency: X.XX`, the lowest efficiency over the cases.
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
CASES = {"tiny": {"prompts": 2048, "n": 4, "max_tokens": 64},
         "smollm2": {"prompts": 256, "n": 4, "max_tokens": 96}}


def prompts(k: int) -> list[list[dict]]:
    """k distinct single-turn conversations: the seed prompts, then numbered variants of them."""
    seeds = [json.loads(x)["prompt"] for x in SEEDS.read_text().splitlines() if x.strip()]
    texts = [seeds[i % len(seeds)] if i < len(seeds) else f"{seeds[i % len(seeds)]} (variant {i // len(seeds)})"
             for i in range(k)]
    return [[{"role": "user", "content": t}] for t in texts]


def store_with_prompts(root: Path, convs: list[list[dict]]):
    from pipelines.prompts import prompt_row, prompts_frame
    from pipelines.store import Store

    store = Store(root)
    rows = [prompt_row(c, task_type="open_qa", source="bench", heldout_fraction=0.0) for c in convs]
    store.append("prompts", prompts_frame(rows), kind="prompts")
    return store


def raw_side(be, convs, sampling) -> tuple[int, float]:
    params = be.sampling_params(sampling)
    t = time.perf_counter()
    outs = be.llm.chat(convs, params, use_tqdm=False)
    dt = time.perf_counter() - t
    return sum(len(c.token_ids) for o in outs for c in o.outputs), dt


def stage_side(be, store, cfg, output: str, **_) -> tuple[int, float]:
    from pipelines.sampling import sample_stage

    t = time.perf_counter()
    ref = sample_stage(store, be, cfg, prompts="prompts", output=output)
    dt = time.perf_counter() - t
    return int(store.read(ref, columns=["completion_tokens"])["completion_tokens"].sum()), dt


def stream_side(be, store, cfg, output: str, *, commit_rows: int, commit_s: float) -> tuple[int, float]:
    """The minimal stage-driver loop over `backend.stream()` (see the module docstring)."""
    from pipelines import keys
    from pipelines.schemas import get_schema
    from pipelines.stage import StageRun

    t = time.perf_counter()
    sampling = cfg.sampling()
    kp = sampling.key_params()
    sjson = json.dumps(kp, sort_keys=True)
    policy, rev = be.model_id, be.revision
    run = StageRun(store, stage="sample", output=output, kind="samples", parents=[store.ref("prompts")],
                   config=cfg.model_dump(mode="json", exclude={"batch_size"}),
                   models={"policy": {"id": policy, "revision": rev}})
    frame = store.read("prompts", columns=["prompt_id", "messages"])
    wanted = {r["prompt_id"]: ([keys.sample_id(r["prompt_id"], policy=policy, revision=rev, sampling=kp,
                                               seed=cfg.seed, index=i) for i in range(cfg.n)],
                               [{"role": m["role"], "content": m["content"]} for m in r["messages"]])
              for r in frame.iter_rows(named=True)}
    done = run.done_keys()
    requests = ((pid, conv) for pid, (ks, conv) in wanted.items() if any(k not in done for k in ks))
    schema = get_schema("samples").schema
    rows: list[dict] = []
    tokens, last = 0, time.monotonic()
    for pid, comps in be.stream(requests, sampling):
        for i, c in enumerate(comps):
            rows.append({"sample_id": wanted[pid][0][i], "prompt_id": pid, "policy": policy, "policy_revision": rev,
                         "sample_index": i, "seed": cfg.seed, "sampling": sjson, "completion": c.text,
                         "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                         "completion_tokens": c.completion_tokens, "is_reference": False})
            tokens += c.completion_tokens
        if len(rows) >= commit_rows or time.monotonic() - last >= commit_s:
            run.write(pl.DataFrame(rows, schema=schema))
            rows, last = [], time.monotonic()
    if rows:
        run.write(pl.DataFrame(rows, schema=schema))
    run.finish(rows_in=len(wanted), target_keys=[k for ks, _ in wanted.values() for k in ks])
    return tokens, time.perf_counter() - t


def bare_side(be, store, cfg, output: str, **_) -> tuple[int, float]:
    """`backend.stream()` alone over the same prompts: no keys, rows, commits or lineage (what the
    engine loop costs against `LLM.chat`)."""
    convs = [[{"role": m["role"], "content": m["content"]} for m in ms]
             for ms in store.read("prompts", columns=["messages"])["messages"].to_list()]
    t = time.perf_counter()
    tokens = sum(c.completion_tokens for _, comps in be.stream(enumerate(convs), cfg.sampling()) for c in comps)
    return tokens, time.perf_counter() - t


def nocommit_side(be, store, cfg, output: str, **kw) -> tuple[int, float]:
    """The stage with one commit at the end (batch and commit interval unbounded): what the
    commits during the stream cost."""
    from pipelines.sampling import sample_stage

    t = time.perf_counter()
    ref = sample_stage(store, be, cfg.model_copy(update={"batch_size": 10**9}), prompts="prompts", output=output,
                       commit_every_s=1e9)
    dt = time.perf_counter() - t
    return int(store.read(ref, columns=["completion_tokens"])["completion_tokens"].sum()), dt


def bench_case(name: str, path: Path, *, prompts_k: int, n: int, max_tokens: int, reps: int, sides: list[str],
               commit_rows: int, commit_s: float) -> dict:
    from generators.backends.base import Sampling
    from generators.backends.vllm_offline import VLLMBackend
    from pipelines.sampling import SamplingStageConfig

    convs = prompts(prompts_k)
    be = VLLMBackend(path, model_id=name, max_model_len=1024)
    t_load = time.perf_counter()
    be.load()
    t_load = time.perf_counter() - t_load
    fns = {"stream": stream_side, "stage": stage_side, "bare": bare_side, "nocommit": nocommit_side}
    raw: list[tuple] = []
    mine: dict[str, list[tuple]] = {s: [] for s in sides}
    loads = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = store_with_prompts(Path(tmp) / "store", convs)
            cfg = SamplingStageConfig(n=n, temperature=0.8, top_p=0.95, max_tokens=max_tokens, split="all")
            raw_side(be, convs, Sampling(n=1, temperature=0, max_tokens=1))      # prefill pass: warm prefix cache
            for r in range(reps):
                # Order alternates (raw first in even reps, prefmill first in odd ones), so that a
                # drift within a rep (warm caches, the collector's work left by the side before)
                # does not always favour the same side.
                order = ["raw", *sides] if r % 2 == 0 else [*reversed(sides), "raw"]
                for side in order:
                    loads.append(os.getloadavg()[0])
                    if side == "raw":
                        tok, dt = raw_side(be, convs, cfg.sampling())
                        raw.append((tok / dt, tok, dt))
                        print(f"  {name} rep {r}: raw {tok} tokens in {dt:.1f} s ({tok / dt:.0f} tok/s), "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)
                        continue
                    tok, dt = fns[side](be, store, cfg.model_copy(update={"seed": 100 + r}), f"{side}{r}",
                                        commit_rows=commit_rows, commit_s=commit_s)
                    mine[side].append((tok / dt, tok, dt))
                    print(f"  {name} rep {r}: prefmill/{side} {tok} tokens in {dt:.1f} s ({tok / dt:.0f} tok/s), "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
                print(f"  {name} rep {r}: efficiency " + ", ".join(
                    f"{s} {mine[s][-1][0] / raw[-1][0]:.3f}" for s in sides) + f" (order {' -> '.join(order)})",
                    flush=True)
    finally:
        be.close()
    # Paired: each prefmill run against the raw run of its rep (same machine load, as far as it goes).
    eff = {s: statistics.median(o[0] / r[0] for o, r in zip(runs, raw)) for s, runs in mine.items()}
    return {"case": name, "prompts": len(convs), "n": n, "max_tokens": max_tokens, "engine_load_s": round(t_load, 1),
            "raw_tok_s": [round(x[0]) for x in raw], "raw_s": [round(x[2], 1) for x in raw],
            **{f"{s}_tok_s": [round(x[0]) for x in runs] for s, runs in mine.items()},
            **{f"{s}_s": [round(x[2], 1) for x in runs] for s, runs in mine.items()},
            "efficiency": eff, "load_avg": [round(x, 1) for x in loads]}


def model_path(name: str) -> Path:
    if name == "tiny":
        from generators.models.tiny import build_tiny_llama

        return build_tiny_llama(Path(tempfile.mkdtemp(prefix="bench-tiny-")), seed=0)
    from generators.models.registry import resolve_model

    return resolve_model(name)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tiny,smollm2", help="comma list of: " + ", ".join(CASES))
    ap.add_argument("--ours", default="stage", help="prefmill's side(s), comma list of stage, stream, bare, "
                    "nocommit (module doc)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=None, help="override the case's prompt count (smoke runs)")
    ap.add_argument("--max-tokens", type=int, default=None, help="override the case's max_tokens")
    ap.add_argument("--commit-rows", type=int, default=256, help="stream: commit after this many rows "
                    "(64 prompts x n=4, the stage's default batch)")
    ap.add_argument("--commit-s", type=float, default=10.0, help="stream: or after this many seconds")
    a = ap.parse_args(argv)
    sides = a.ours.split(",")
    if not sides or not set(sides) <= {"stream", "stage", "bare", "nocommit"}:
        ap.error(f"--ours {a.ours!r}; use a comma list of stage, stream, bare, nocommit")
    results = []
    for name in a.cases.split(","):
        if name not in CASES:
            ap.error(f"unknown case {name!r}; expected one of {', '.join(CASES)}")
        c = CASES[name]
        r = bench_case(name, model_path(name), prompts_k=a.prompts or c["prompts"], n=c["n"],
                       max_tokens=a.max_tokens or c["max_tokens"], reps=a.reps, sides=sides,
                       commit_rows=a.commit_rows, commit_s=a.commit_s)
        results.append(r)
        print(f"{name}: {r['prompts']} prompts x n={r['n']} x {r['max_tokens']} tokens: raw {r['raw_tok_s']} tok/s, "
              + ", ".join(f"prefmill/{s} {r[s + '_tok_s']} tok/s (efficiency {r['efficiency'][s]:.3f})" for s in sides)
              + f", load {r['load_avg']}", flush=True)
    print(json.dumps(results))
    # The headline is prefmill's own path: the first side asked for (the stage unless --ours says otherwise).
    print(f"generation_efficiency: {min(r['efficiency'][sides[0]] for r in results):.2f}")


if __name__ == "__main__":
    main()
