"""prefmill against distilabel, curator and Data Designer on one job, one vLLM server, one machine.

    .venv/bin/python benchmarks/vs_peers.py                 # tiny N=64/256/1024 + SmolLM2 N=64 (~45 min)
    .venv/bin/python benchmarks/vs_peers.py --quick         # tiny N=16, one run per side (~5 min)
    .venv/bin/python benchmarks/vs_peers.py --only tiny --sizes 256 --repeats 5
    .venv/bin/python benchmarks/vs_peers.py --only tiny --sizes 1024 --repeats 0 --profile 1024

The job: N prompts -> 4 samples each (temperature 1, top_p 1) -> a pointwise LLM-judge score per
sample (prefmill's judge_pointwise.jinja on every side, greedy) -> one best-vs-worst pair per
prompt, on disk. Every side talks to the same vLLM OpenAI-compatible server (started here, on
loopback) and is timed from process start to process exit (imports, pipeline set-up, writing the
pairs all inside the timer). prefmill runs as `prefmill run RECIPE` (policy kind openai, a judge
scorer on the same endpoint, pairs best_vs_worst); the peers run benchmarks/peers/*_side.py in
their own virtualenvs (benchmarks/peers/infra.py pins the versions). Sides run in a shuffled order
in every repeat, after one untimed warm-up run per side (so no side pays for creating Prefect's
database or a cold page cache). Every timed run gets a vLLM server started (and warmed up by one
request of each kind) for it, untimed: one server kept for a block of runs slowed down over the
block (prefmill's tiny N=1,024 stages: 134 s of engine time in the first run, 218 s later;
distilabel's SmolLM2 N=64 run: 166 s early in one block, 384 s third in another), so later runs
paid for earlier ones (`--shared-server` restores the old way). Medians and ranges are reported with the load average
(1-minute, at the start of each run).

The server forces each judge reply to end in "Score: d" (benchmarks/peers/judge_forcer.py), the
same for every side, so that a random model's judge replies can be read. Concurrency: the same
number of requests in flight on every side (--concurrency); see docs/benchmarks.md for each
peer's settings and the sources they follow.

Last line: `vs_peers: X.XX` = the smallest (peer median / prefmill median) at the largest tiny N
among the peers that completed the job.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

from infra import PEER_ENV, PEERS, VLLMServer, ensure_venv, versions  # noqa: E402

TOPICS = ["rivers", "bread", "chess", "volcanoes", "jazz", "tides", "bees", "glass", "maps", "clocks", "owls",
          "copper", "tea", "kites", "salt", "moss"]
# model -> (sample max_tokens, judge max_tokens, KV cache GiB)
MODELS = {"tiny": (32, 16, 1.0), "smollm2": (64, 32, 2.0)}
SIDES = ["prefmill", *PEERS]


def judge_template() -> str:
    """prefmill's pointwise judge prompt (text reading, rubric 0-5) as a Jinja template over one user
    prompt (`instruction`) and `response` for the peers, checked to render what prefmill renders."""
    from jinja2 import Template

    from generators.templates import render

    fixed = {"short_reply": False, "low": "0", "high": "5"}     # what PointwiseJudge passes for reading=text
    marks = ("\x00INSTRUCTION\x00", "\x00RESPONSE\x00")
    text = render("judge_pointwise.jinja", messages=[{"role": "user", "content": marks[0]}], response=marks[1], **fixed)
    if any(text.count(m) != 1 for m in marks):
        raise RuntimeError("judge_pointwise.jinja no longer shows the prompt and the response once each; update "
                           "vs_peers.judge_template")
    head, rest = text.split(marks[0])
    mid, tail = rest.split(marks[1])
    peer = "".join(["{% raw %}", head, "{% endraw %}{{ instruction }}{% raw %}", mid, "{% endraw %}{{ response }}"
                    "{% raw %}", tail, "{% endraw %}"])
    probe = {"p": "Explain tides {twice}.\nBriefly.", "r": "The moon pulls.\n\nScore: 9"}
    ours = render("judge_pointwise.jinja", messages=[{"role": "user", "content": probe["p"]}], response=probe["r"],
                  **fixed)
    if Template(peer).render(instruction=probe["p"], response=probe["r"]).strip() != ours:
        raise RuntimeError("the peers' judge template renders differently from prefmill's; fix judge_template()")
    return peer


def prompts(n: int) -> list[str]:
    return [f"Write two sentences about {TOPICS[i % len(TOPICS)]} (note {i})." for i in range(n)]


def write_job(d: Path, n: int, *, url: str, model: str, concurrency: int, template: str) -> dict:
    """prompts.jsonl, job.json (peers) and recipe.yaml (prefmill) for N prompts in folder d."""
    import yaml

    d.mkdir(parents=True, exist_ok=True)
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(n)))
    max_tokens, judge_tokens, _ = MODELS[model]
    job = {"prompts_path": str(d / "prompts.jsonl"), "base_url": url, "model": model, "n": 4, "temperature": 1.0,
           "top_p": 1.0, "max_tokens": max_tokens, "judge_max_tokens": judge_tokens, "judge_temperature": 0.0,
           "concurrency": concurrency, "judge_template": template}
    (d / "job.json").write_text(json.dumps(job))
    endpoint = {"kind": "openai", "model": model, "base_url": url, "concurrency": concurrency, "timeout_s": 600}
    recipe = {"name": "vs-peers", "policy": endpoint,
              "prompts": {"seeds": {"path": str(d / "prompts.jsonl")}, "heldout_fraction": 0.0,
                          "dedup": {"near": False}},     # the peers dedup nothing: every side gets all N prompts
              "sampling": {"n": 4, "temperature": 1.0, "top_p": 1.0, "max_tokens": max_tokens},
              "scoring": [{"kind": "judge", "backend": endpoint, "temperature": 0.0, "max_tokens": judge_tokens,
                           "reading": "text"}],
              "pairs": {"strategy": "best_vs_worst", "dedup": "off"}, "rounds": {"count": 0},
              "report": {"out": str(d / "report")}}
    (d / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return job


def side_command(side: str, d: Path, run: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one timed run of `side` (output under `run`)."""
    if side == "prefmill":
        env = {**os.environ, "PREFECT_HOME": str(d.parent / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        return [str(Path(sys.executable).with_name("prefmill")), "run", str(d / "recipe.yaml"), "--store",
                str(run / "store")], env
    job = json.loads((d / "job.json").read_text())
    job.update(out=str(run / "pairs.jsonl"), work=str(run))
    (run / "job.json").write_text(json.dumps(job))
    env = {**os.environ, **PEER_ENV, "CURATOR_CACHE_DIR": str(run / "curator-cache")}
    script = ROOT / "benchmarks" / "peers" / f"{side.replace('-', '_')}_side.py"
    return [str(ensure_venv(side)), str(script), str(run / "job.json")], env


def count_pairs(side: str, run: Path) -> int:
    if side == "prefmill":
        from pipelines.store import Store

        store = Store(run / "store")
        names = [t for t in store.tables() if t.endswith(".pairs")]
        return store.count(names[0]) if names else 0
    out = run / "pairs.jsonl"
    return sum(1 for line in out.read_text().splitlines() if line.strip()) if out.exists() else 0


def run_side(side: str, d: Path, run: Path, *, timeout_s: float) -> dict:
    """One timed run: process start to exit. Returns wall seconds, pairs on disk, load, status."""
    run.mkdir(parents=True, exist_ok=True)
    cmd, env = side_command(side, d, run)
    load = os.getloadavg()[0]
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with (run / "log.txt").open("w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    phases = prefmill_phases(run / "store", wall) if side == "prefmill" and rc == 0 else {}
    # CPU seconds of the side's process tree (the processes it waited for): what the client takes
    # from the two cores the server also runs on.
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"side": side, "wall_s": wall, "rc": rc, "pairs": count_pairs(side, run) if rc == 0 else 0,
            "load1": load, "log": str(run / "log.txt"), "phases": phases, "client_cpu_s": cpu}


def prefmill_phases(store: Path, wall: float) -> dict[str, float]:
    """Where a `prefmill run` spent its wall time, from the completion records in its store's
    lineage: each stage's own wall seconds (the judge stage's only after sampling when its passes
    ran beside sampling), and the rest of the run (start-up, Prefect API and flow, report)."""
    from flows.report_funnel import funnel_rows
    from pipelines.lineage import LINEAGE_TABLE
    from pipelines.store import Store

    st = Store(store, create=False)
    if not st.exists(LINEAGE_TABLE):
        return {}
    rows = funnel_rows(st.read(LINEAGE_TABLE), recipe=None)
    stages: dict[str, float] = {}
    for r in rows.iter_rows(named=True) if rows.height else ():
        stages[f"stage {r['stage']}"] = stages.get(f"stage {r['stage']}", 0.0) + r["wall_s"]
    return {**stages, "rest_s": wall - sum(stages.values())}


def warm_up(url: str, model: str, template: str) -> None:
    """One sample and one judge request, so no timed run pays the engine's first-request cost."""
    import httpx
    from jinja2 import Template

    judge = Template(template).render(instruction="Say hi.", response="Hi.").strip()
    for content, n, mt in (("Say hi.", 4, 8), (judge, 1, 8)):
        httpx.post(f"{url}/chat/completions", timeout=600, json={"model": model, "n": n, "max_tokens": mt,
                                                                 "messages": [{"role": "user", "content": content}]})


def summarize(rows: list[dict], model: str, n: int) -> dict:
    out: dict = {"model": model, "n": n, "sides": {}}
    for side in SIDES:
        rs = [r for r in rows if r["side"] == side]
        if not rs:
            continue
        ok = [r for r in rs if r["rc"] == 0 and r["pairs"] >= 0.9 * n]
        walls = [r["wall_s"] for r in ok]
        out["sides"][side] = {"runs": len(rs), "ok": len(ok), "median_s": statistics.median(walls) if walls else None,
                              "min_s": min(walls, default=None), "max_s": max(walls, default=None),
                              "pairs": [r["pairs"] for r in rs], "load1": [round(r["load1"], 1) for r in rs],
                              "walls": [round(r["wall_s"], 1) for r in rs], "phases": [r["phases"] for r in rs]}
    base = out["sides"].get("prefmill", {}).get("median_s")
    for side, s in out["sides"].items():
        s["ratio"] = s["median_s"] / base if base and s["median_s"] and side != "prefmill" else None
    return out


def print_block(s: dict) -> None:
    print(f"== {s['model']} N={s['n']}: median wall s [range] (pairs; load1 at start of each run)", flush=True)
    for side, v in s["sides"].items():
        med = f"{v['median_s']:.1f} [{v['min_s']:.1f}-{v['max_s']:.1f}]" if v["median_s"] else "did not complete"
        ratio = f"  ratio {v['ratio']:.2f}" if v.get("ratio") else ""
        print(f"   {side:14s} {med:>22s}  {v['ok']}/{v['runs']} ok{ratio}  pairs {v['pairs']}  load {v['load1']}",
              flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny N=16, one run per side, no SmolLM2")
    ap.add_argument("--only", choices=list(MODELS), default=None, help="one server only")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="N on the tiny server")
    ap.add_argument("--smol-sizes", type=int, nargs="+", default=[64], help="N on the SmolLM2 server")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side and N (tiny)")
    ap.add_argument("--smol-repeats", type=int, default=3, help="runs per side and N (SmolLM2)")
    ap.add_argument("--sides", nargs="+", choices=SIDES, default=SIDES, help="which sides to run")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight per side (see the docs)")
    ap.add_argument("--profile", type=int, default=None, metavar="N", help="then profile prefmill at tiny N (py-spy)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the run order")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed run per side")
    ap.add_argument("--shared-server", dest="fresh_server", action="store_false",
                    help="time every run on one server (default: a fresh server per timed run; the one server "
                         "slowed over a block of runs, so later runs paid for earlier ones)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a run counts as failed")
    ap.add_argument("--work", default=None, help="work folder (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.repeats, a.only = [16], 1, a.only or "tiny"
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    from generators.models.registry import resolve_model
    from generators.models.tiny import build_tiny_llama

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="vs-peers-"))
    template, rng = judge_template(), random.Random(a.seed)
    peers = [s for s in a.sides if s != "prefmill"]
    for p in peers:
        ensure_venv(p)
        print(f"{p}: {versions(p)}", flush=True)
    models = {"tiny": lambda: build_tiny_llama(work / "tiny-model", seed=0), "smollm2": lambda: resolve_model("smollm2")}
    plan = {"tiny": (a.sizes, a.repeats), "smollm2": (a.smol_sizes, a.smol_repeats)}
    blocks = []
    for model in [m for m in MODELS if a.only in (None, m)]:
        sizes, repeats = plan[model]
        model_dir = models[model]()

        def start(tag: str) -> tuple[VLLMServer, str]:
            srv = VLLMServer(model_dir, name=model, log=work / f"server-{model}-{tag}.log", kv_gib=MODELS[model][2])
            url = srv.__enter__()
            warm_up(url, model, template)
            return srv, url

        server, url = start("shared")
        try:
            if a.warmup:      # one untimed run per side: Prefect's database, page cache, .pyc files
                d = work / f"{model}-warmup"
                write_job(d, 4, url=url, model=model, concurrency=a.concurrency, template=template)
                for side in a.sides:
                    r = run_side(side, d, d / side, timeout_s=a.timeout)
                    print(f"{model} warm-up {side}: {r['wall_s']:.1f} s, rc {r['rc']}, {r['pairs']} pairs", flush=True)
            for n in sizes:
                d = work / f"{model}-n{n}"
                rows = []
                for rep in range(repeats):
                    order = list(a.sides)
                    rng.shuffle(order)
                    for side in order:
                        if a.fresh_server:   # every timed run on a server started for it (untimed)
                            server.__exit__(None, None, None)
                            server, url = start(f"n{n}-{rep}-{side}")
                        write_job(d, n, url=url, model=model, concurrency=a.concurrency, template=template)
                        r = run_side(side, d, d / f"{side}-{rep}", timeout_s=a.timeout)
                        rows.append(r)
                        print(f"{model} N={n} #{rep} {side}: {r['wall_s']:.1f} s, rc {r['rc']}, {r['pairs']} pairs, "
                              f"load {r['load1']:.1f}, client cpu {r['client_cpu_s']:.1f} s", flush=True)
                        if r["phases"]:
                            print("    prefmill: " + ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items()),
                                  flush=True)
                if rows:
                    blocks.append(summarize(rows, model, n))
                    print_block(blocks[-1])
            if a.profile and model == "tiny":
                from pyspy import profile_prefmill

                d = work / f"tiny-n{a.profile}"
                write_job(d, a.profile, url=url, model=model, concurrency=a.concurrency, template=template)
                (d / "profile").mkdir(parents=True, exist_ok=True)
                cmd, env = side_command("prefmill", d, d / "profile")
                profile_prefmill(cmd, d / "profile", env=env)
        finally:
            server.__exit__(None, None, None)
    (work / "results.json").write_text(json.dumps(blocks, indent=1))
    print(f"results: {work / 'results.json'}; load now {os.getloadavg()[0]:.1f}", flush=True)
    for s in blocks:
        print_block(s)
    tiny = [s for s in blocks if s["model"] == "tiny"]
    if tiny:
        last = max(tiny, key=lambda s: s["n"])
        ratios = {k: v["ratio"] for k, v in last["sides"].items() if v.get("ratio")}
        if ratios:
            worst = min(ratios, key=ratios.get)
            print(f"vs_peers: {ratios[worst]:.2f} (smallest peer/prefmill median wall ratio, tiny N={last['n']}: "
                  f"{worst}; {', '.join(f'{k} {v:.2f}' for k, v in ratios.items())})")


if __name__ == "__main__":
    main()
