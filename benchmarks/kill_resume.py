"""Crash and resume of the sampling stage: SIGKILL a real sampling run at random moments, resume
it, and compare the result with an uninterrupted run.

    .venv/bin/python benchmarks/kill_resume.py                # 20 kills (a few minutes on 2 cores)
    .venv/bin/python benchmarks/kill_resume.py --kills 5 --prompts 40

A worker subprocess (this file with --worker) loads a tiny random Llama with the transformers
backend (start-up ~5 s; vLLM's ~20 s engine start would make 20 kills take far longer) and
runs pipelines.sampling.sample_stage with greedy decoding, printing one line after every
committed batch. The parent kills it with SIGKILL at one of four kinds of moment:
  between    right after a batch commit was acknowledged, before the next batch is generated
  in-commit  the moment the next commit's first file appears in the table folder (data written,
             log entry maybe not yet)
  during     at a random delay into the next batch (generation or commit)
  startup    shortly after the model is loaded (while committed keys are read / first batch)
After each kill it reads the table and records every committed row; then it resumes. At the end
it checks: the same set of keys as an uninterrupted run, no key twice, every row seen before a
kill unchanged in the final table, and (greedy decoding) the whole table identical to the
uninterrupted run's. Greedy runs are decoded one sequence at a time (max_batch_size=1), so a
row's text cannot depend on which rows shared its batch after a resume.

Last line: `kill_resume: N kills, L lost, D duplicated, C changed`.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUTPUT = "kr_samples"
PROMPTS = "kr_prompts"
TOPICS = ["rivers", "bread", "chess", "volcanoes", "jazz", "tides", "bees", "glass", "maps", "clocks"]


def make_prompts(store, n: int) -> str:
    """n distinct user prompts in a prompts table; returns its ref."""
    from pipelines.prompts import prompt_row, prompts_frame

    rows = [prompt_row([{"role": "user", "content": f"Question {i}: tell me one fact about {TOPICS[i % len(TOPICS)]}."}],
                       task_type="open_qa", source="kill_resume", heldout_fraction=0.0) for i in range(n)]
    store.append(PROMPTS, prompts_frame(rows), kind="prompts")
    return f"{PROMPTS}@0"


def worker(args: argparse.Namespace) -> None:
    """Run the sampling stage to completion, one stdout line per committed batch."""
    from generators.backends.hf import TransformersBackend
    from pipelines.sampling import SamplingStageConfig, sample_stage
    from pipelines.store import Store

    store = Store(args.store)
    backend = TransformersBackend(args.model, max_batch_size=1)
    backend.load()
    cfg = SamplingStageConfig(n=args.n, temperature=0.0, max_tokens=args.max_tokens, batch_size=args.batch_size,
                              split="all")
    print("ready", flush=True)
    ref = sample_stage(store, backend, cfg, prompts=f"{PROMPTS}@0", output=OUTPUT,
                       progress=lambda done, total: print(f"progress {done} {total}", flush=True))
    print(f"finished {ref.version}", flush=True)


def _spawn(store: Path, model: Path, a: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", "--store", str(store), "--model", str(model), "--n", str(a.n),
           "--max-tokens", str(a.max_tokens), "--batch-size", str(a.batch_size)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")} if folder.is_dir() else set()


def run_once(store: Path, model: Path, a: argparse.Namespace, rng: random.Random) -> tuple[bool, str]:
    """Start a worker and SIGKILL it at a random moment; returns (finished, kill mode)."""
    proc = _spawn(store, model, a)
    mode = rng.choice(["between", "between", "in-commit", "in-commit", "during", "during", "startup"])
    target = rng.randint(1, 2)            # commits to let through (the first progress line is the start)
    commits, finished = -1, False
    table = store / "tables" / OUTPUT
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        word = line.split()[0] if line.strip() else ""
        if word == "finished":
            finished = True
            break
        if word == "ready" and mode == "startup":
            time.sleep(rng.uniform(0.0, a.batch_wait))
            break
        if word != "progress":
            continue
        commits += 1
        if commits < target:
            continue
        if mode == "in-commit":
            before, deadline = _files(table), time.monotonic() + 60
            while _files(table) == before and proc.poll() is None and time.monotonic() < deadline:
                pass
        elif mode == "during":
            time.sleep(rng.uniform(0.0, a.batch_wait))
        break
    if proc.poll() is None and not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    if not finished and proc.returncode not in (-signal.SIGKILL, 0):
        raise RuntimeError(f"worker failed (exit {proc.returncode}):\n{err[-3000:]}")
    return finished or proc.returncode == 0, mode


@dataclass
class Result:
    kills: int = 0
    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    identical: bool = False
    key_sets_equal: bool = False
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"kill_resume: {self.kills} kills, {self.lost} lost, {self.duplicated} duplicated, {self.changed} changed"


def _rows(store_root: Path) -> dict[str, tuple]:
    """sample_id -> the whole row (as a tuple) of the table's latest version, or {} if none."""
    from pipelines.store import Store

    st = Store(store_root)
    if not st.exists(OUTPUT):
        return {}
    df = st.read(OUTPUT)
    return {r[0]: r for r in df.rows()}


def kill_and_resume(work: Path, *, kills: int = 20, prompts: int = 150, n: int = 4, batch_size: int = 3,
                    max_tokens: int = 12, seed: int = 0, log=print) -> Result:
    """The whole experiment in `work` (see the module docstring)."""
    from generators.models.tiny import build_tiny_llama
    from pipelines.store import Store

    a = argparse.Namespace(n=n, max_tokens=max_tokens, batch_size=batch_size, batch_wait=0.15)
    work.mkdir(parents=True, exist_ok=True)
    model = build_tiny_llama(work / "model", seed=0)
    ref_root, kill_root = work / "reference", work / "killed"
    for root in (ref_root, kill_root):
        make_prompts(Store(root), prompts)
    t0 = time.perf_counter()
    proc = _spawn(ref_root, model, a)
    _, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"uninterrupted run failed:\n{err[-3000:]}")
    log(f"uninterrupted run: {time.perf_counter() - t0:.1f} s")
    reference = _rows(ref_root)

    res, rng = Result(), random.Random(seed)
    seen: dict[str, tuple] = {}          # every row observed committed after some kill
    for i in range(kills):
        finished, mode = run_once(kill_root, model, a, rng)
        if finished:
            log(f"run {i + 1}: finished")
            break
        res.kills += 1
        res.modes[mode] = res.modes.get(mode, 0) + 1
        now = _rows(kill_root)
        vanished = [k for k in seen if k not in now]
        altered = [k for k in seen if k in now and now[k] != seen[k]]
        res.lost += len(vanished)
        res.changed += len(altered)
        seen.update({k: v for k, v in now.items() if k not in seen})
        log(f"kill {res.kills} ({mode}): {len(now)} rows committed")
    if not Store(kill_root).exists(OUTPUT) or len(_rows(kill_root)) < len(reference):
        proc = _spawn(kill_root, model, a)
        _, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"final resume failed:\n{err[-3000:]}")
    final_df = Store(kill_root).read(OUTPUT)
    final = {r[0]: r for r in final_df.rows()}
    res.rows = final_df.height
    res.duplicated = final_df.height - final_df.get_column("sample_id").n_unique()
    res.lost += len([k for k in seen if k not in final])
    res.changed += len([k for k in seen if k in final and final[k] != seen[k]])
    res.key_sets_equal = set(final) == set(reference)
    res.lost += len(set(reference) - set(final))
    differing = [k for k in reference if k in final and final[k] != reference[k]]
    res.changed += len(differing)
    res.identical = res.key_sets_equal and not differing and res.duplicated == 0
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs before the final resume")
    ap.add_argument("--prompts", type=int, default=150, help="prompts to sample")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--batch-size", type=int, default=3, help="prompts per committed batch")
    ap.add_argument("--max-tokens", type=int, default=12, help="tokens per sample")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--work", default=None, help="work folder (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.worker:
        worker(a)
        return
    import tempfile

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="kill-resume-"))
    t0 = time.perf_counter()
    res = kill_and_resume(work, kills=a.kills, prompts=a.prompts, n=a.n, batch_size=a.batch_size,
                          max_tokens=a.max_tokens, seed=a.seed)
    print(f"work: {work}; backend: transformers (greedy, one sequence per forward pass); "
          f"{a.prompts} prompts x n={a.n}, batch_size={a.batch_size}, max_tokens={a.max_tokens}")
    print(f"kill moments: {res.modes}; final rows {res.rows}; key sets equal: {res.key_sets_equal}; "
          f"table identical to the uninterrupted run: {res.identical}; wall {time.perf_counter() - t0:.0f} s")
    for note in res.notes:
        print(note)
    print(res.line())


if __name__ == "__main__":
    main()
