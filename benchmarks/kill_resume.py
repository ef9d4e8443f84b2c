"""Crash and resume of the sampling stage: SIGKILL it at uniform random times, resume, compare.

    .venv/bin/python benchmarks/kill_resume.py                        # 20 greedy-transformers + 12 vLLM kills
    .venv/bin/python benchmarks/kill_resume.py --backends hf --kills 5 --prompts 12

The stage: SPIN-mode sampling (n samples + the gold answer per prompt; prompts without a gold
answer are quarantined), into an output table that already holds rows of an earlier config (other
max_tokens), which `finish` deletes before it writes the lineage record. So one run covers model
calls, batch commits, a quarantine commit, key deletion and the lineage write.

A worker subprocess (this file with --worker) loads the backend, then runs the stage; it wraps
StageRun/Store methods in its own process (nothing in pipelines/ changes) to write the phase it
is in (prepare, generate, commit, quarantine, finish:delete, finish:lineage, ...) into a small
file that survives the kill. The parent kills it at t ~ U(0, D) after the stage starts, D = the
expected duration of what is left (from an uninterrupted reference run: fixed part + generation
scaled by the share of samples still missing + finish), so every moment of the remaining stage is
equally likely. A kill inside a commit that left data files but no log entry is reported as
"commit:data-without-log". A run that ends before its kill time completes the episode; the next
episode starts again from the initial store.

Checks, per episode: no committed row (of the target keys) ever vanishes or changes after a
kill; the final key set equals the reference run's; no key twice; no stale row left; one lineage
record and no duplicate quarantine rows. Greedy transformers (one sequence per forward pass): the
whole final table equals the reference. vLLM at temperature 1: texts depend on scheduling, so
only keys and committed rows are compared.

Last line: `kill_resume: K kills, L lost, D duplicated, C changed`.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUTPUT, PROMPTS = "kr_samples", "kr_prompts"
TOPICS = ["rivers", "bread", "chess", "volcanoes", "jazz", "tides", "bees", "glass", "maps", "clocks"]
BACKENDS = {"hf": "transformers, greedy, one sequence per forward", "vllm": "vLLM offline, temperature 1, streamed"}


def make_store(root: Path, n_prompts: int) -> None:
    """Prompts (every third without a gold answer) in a fresh store."""
    from pipelines.prompts import prompt_row, prompts_frame
    from pipelines.store import Store

    rows = [prompt_row([{"role": "user", "content": f"Question {i}: one fact about {TOPICS[i % len(TOPICS)]}."}],
                       task_type="open_qa", source="kill_resume", heldout_fraction=0.0,
                       reference=None if i % 3 == 0 else f"Gold answer {i}.") for i in range(n_prompts)]
    Store(root).append(PROMPTS, prompts_frame(rows), kind="prompts")


# ------------------------------------------------------------------------------------------
# worker (child process)
# ------------------------------------------------------------------------------------------
class Phase:
    """The worker's current phase in a fixed-width file (the page cache keeps it after SIGKILL)."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.log = open(path + ".log", "a", buffering=1)     # "time phase" lines (durations of a reference run)
        self.now = "startup"
        self.set("startup")

    def set(self, name: str) -> None:
        self.now = name
        os.pwrite(self.fd, name.encode().ljust(32), 0)
        self.log.write(f"{time.time()} {name}\n")


def _instrument(phase: Phase) -> None:
    """Mark phases around the stage's writes (in this process only)."""
    from pipelines.lineage import LINEAGE_TABLE
    from pipelines.sampling import SampleWork
    from pipelines.stage import StageRun
    from pipelines.store import Store

    def wrap(cls, name: str, label, after: str | None = None) -> None:
        orig = getattr(cls, name)

        def inner(*args, **kw):
            prev = phase.now
            phase.set(label(prev, args) if callable(label) else label)
            try:
                return orig(*args, **kw)
            finally:
                phase.set(after or prev)
        setattr(cls, name, inner)

    wrap(SampleWork, "prepare", "prepare", after="generate")
    wrap(StageRun, "write", "commit")
    wrap(StageRun, "quarantine", "quarantine")
    wrap(StageRun, "finish", "finish")
    wrap(Store, "delete_keys", lambda prev, a: "finish:delete" if prev.startswith("finish") else "delete")
    wrap(Store, "append", lambda prev, a: ("finish:lineage" if a[1] == LINEAGE_TABLE else f"{prev}:append"))


def worker(a: argparse.Namespace) -> None:
    from pipelines.sampling import SamplingStageConfig, sample_stage
    from pipelines.store import Store

    phase = Phase(a.phase_file)
    if a.backend == "hf":
        from generators.backends.hf import TransformersBackend

        backend = TransformersBackend(a.model, max_batch_size=1)
        temperature = 0.0
    else:
        from generators.backends.vllm_offline import VLLMBackend

        backend = VLLMBackend(a.model, kv_cache_gib=0.25, max_model_len=512)
        temperature = 1.0
    backend.load()
    cfg = SamplingStageConfig(mode="spin", n=a.n, temperature=temperature, max_tokens=a.max_tokens,
                              batch_size=a.batch_size, split="all", seed=a.seed)
    store = Store(a.store)
    _instrument(phase)
    print(f"ready {time.time()}", flush=True)
    phase.set("stage")
    sample_stage(store, backend, cfg, prompts=f"{PROMPTS}@0", output=OUTPUT, commit_every_s=1.0)
    phase.set("done")
    print(f"finished {time.time()}", flush=True)
    os._exit(0)      # the stage is committed; skip the engine's slow interpreter-exit teardown


# ------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------
def _spawn(root: Path, model: Path, a: argparse.Namespace, backend: str, *, max_tokens: int | None = None,
           seed: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", "--backend", backend, "--store", str(root), "--model", str(model),
           "--n", str(a.n), "--max-tokens", str(max_tokens or a.max_tokens), "--batch-size", str(a.batch_size),
           "--seed", str(seed), "--phase-file", str(root / "phase")]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _complete(proc: subprocess.Popen, what: str) -> tuple[float, float]:
    """Wait for a worker to finish; return (stage start, stage end) wall-clock times."""
    out, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{err[-3000:]}")
    t = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.split()[:1] in (["ready"], ["finished"])}
    return t["ready"], t["finished"]


def _fixed_seconds(root: Path) -> float:
    """Seconds of a completed run that do not scale with the samples left: from the stage's start
    to the end of `prepare`, and from `finish` to the end."""
    marks = [(float(t), name) for t, name in (ln.split(" ", 1) for ln in (root / "phase.log").read_text().splitlines())]
    start = next(t for t, name in marks if name == "stage")
    gen = next(t for t, name in marks if name == "generate")
    fin = next(t for t, name in marks if name == "finish")
    end = next(t for t, name in marks if name == "done")
    return (gen - start) + (end - fin)


def _rows(root: Path) -> dict[str, tuple]:
    from pipelines.store import Store

    st = Store(root)
    return {r[0]: r for r in st.read(OUTPUT).rows()} if st.exists(OUTPUT) else {}


def _orphans(root: Path) -> set[str]:
    """Data files of the output table that no log entry adds (a commit killed before its log entry)."""
    table = root / "tables" / OUTPUT
    added = set()
    for entry in sorted((table / "_delta_log").glob("*.json")) if table.is_dir() else []:
        for line in entry.read_text().splitlines():
            if '"add"' in line:
                added.add(json.loads(line)["add"]["path"])
    on_disk = {str(p.relative_to(table)) for p in table.rglob("*.parquet") if "_delta_log" not in p.parts}
    return on_disk - added


@dataclass
class Result:
    kills: int = 0
    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    episodes: int = 0
    phases: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"kill_resume: {self.kills} kills, {self.lost} lost, {self.duplicated} duplicated, {self.changed} changed"

    def finish_kills(self) -> int:
        return sum(v for k, v in self.phases.items() if k.startswith("finish"))


def _check_final(root: Path, ref: dict[str, tuple], seen: dict[str, tuple], res: Result, *, greedy: bool) -> None:
    from pipelines.lineage import LINEAGE_TABLE
    from pipelines.quarantine import QUARANTINE_TABLE
    from pipelines.store import Store

    st = Store(root)
    df = st.read(OUTPUT)
    final = {r[0]: r for r in df.rows()}
    res.duplicated += df.height - df.get_column("sample_id").n_unique()
    res.lost += len(set(ref) - set(final)) + len([k for k in seen if k in ref and k not in final])
    res.changed += len([k for k in seen if k in final and final[k] != seen[k]])
    stale = set(final) - set(ref)
    if stale:
        res.notes.append(f"{len(stale)} stale rows left in the final version")
        res.duplicated += len(stale)
    if greedy:
        res.changed += len([k for k in ref if k in final and final[k] != ref[k]])
    recs = st.read(LINEAGE_TABLE).filter(st.read(LINEAGE_TABLE)["table"] == OUTPUT)
    res.duplicated += max(0, recs.height - 2)        # the earlier config's record + this run's
    q = st.read(QUARANTINE_TABLE)
    res.duplicated += q.height - q.get_column("quarantine_id").n_unique()


def kill_and_resume(work: Path, *, backend: str, kills: int, prompts: int = 24, n: int = 2, batch_size: int = 3,
                    max_tokens: int = 8, seed: int = 0, log=print) -> Result:
    """The whole experiment for one backend in `work` (see the module docstring)."""
    from generators.models.tiny import build_tiny_llama

    a = argparse.Namespace(n=n, max_tokens=max_tokens, batch_size=batch_size)
    work.mkdir(parents=True, exist_ok=True)
    model = build_tiny_llama(work / "model", seed=0)
    initial, ref_root = work / "initial", work / "reference"
    shutil.rmtree(initial, ignore_errors=True)
    make_store(initial, prompts)
    _complete(_spawn(initial, model, a, backend, max_tokens=max_tokens + 1), "earlier-config run")
    for f in initial.glob("phase*"):
        f.unlink()
    shutil.rmtree(ref_root, ignore_errors=True)
    shutil.copytree(initial, ref_root)
    proc = _spawn(ref_root, model, a, backend)
    t_ready, t_end = _complete(proc, "uninterrupted run")
    stage_s, fixed_s = t_end - t_ready, _fixed_seconds(ref_root)
    ref = _rows(ref_root)
    log(f"{backend}: uninterrupted stage {stage_s:.1f} s ({fixed_s:.1f} s prepare + finish), {len(ref)} rows")
    res, rng = Result(), random.Random(seed)
    root, seen = None, {}
    while res.kills < kills:
        if root is None:
            res.episodes += 1
            root, seen = work / f"episode-{res.episodes}", {}
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(initial, root)
        left = 1 - len([k for k in _rows(root) if k in ref]) / len(ref)
        t_kill = rng.uniform(0, fixed_s + (stage_s - fixed_s) * left)
        proc = _spawn(root, model, a, backend)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and not line.startswith("ready"):     # vLLM logs to stdout before the worker is ready
            line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"worker did not start: {line!r} {proc.communicate()[1][-3000:]}")
        before = _orphans(root)
        try:
            proc.wait(timeout=t_kill)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:                   # finished before its kill time: episode complete
            _check_final(root, ref, seen, res, greedy=backend == "hf")
            log(f"{backend} episode {res.episodes}: completed")
            root = None
            continue
        if proc.returncode != -signal.SIGKILL:
            raise RuntimeError(f"worker failed (exit {proc.returncode}):\n{err[-3000:]}")
        phase = (root / "phase").read_text().strip()
        if phase == "done":                        # killed after the stage had completed: same as finishing
            _check_final(root, ref, seen, res, greedy=backend == "hf")
            log(f"{backend} episode {res.episodes}: completed")
            root = None
            continue
        if phase.endswith("commit:append") and _orphans(root) - before:
            phase = "commit:data-without-log"
        res.kills += 1
        res.phases[phase] = res.phases.get(phase, 0) + 1
        now = _rows(root)
        res.lost += len([k for k in seen if k in ref and k not in now])
        res.changed += len([k for k in seen if k in now and now[k] != seen[k]])
        seen.update({k: v for k, v in now.items() if k in ref and k not in seen})
        log(f"{backend} kill {res.kills} at {t_kill:.2f} s ({phase}): {len(now)} rows")
    if root is not None:
        _complete(_spawn(root, model, a, backend), "final resume")
        _check_final(root, ref, seen, res, greedy=backend == "hf")
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", choices=list(BACKENDS), help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--phase-file", help=argparse.SUPPRESS)
    ap.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    ap.add_argument("--kills", type=int, nargs="+", default=[20, 12], help="kills per backend (in --backends order)")
    ap.add_argument("--prompts", type=int, default=24, help="prompts (every third without a gold answer)")
    ap.add_argument("--n", type=int, default=2, help="samples per prompt")
    ap.add_argument("--batch-size", type=int, default=3, help="prompts per committed batch")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per sample")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times (worker: sampling seed)")
    ap.add_argument("--work", default=None, help="work folder (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.worker:
        worker(a)
        return
    import tempfile

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="kill-resume-"))
    total = Result()
    t0 = time.perf_counter()
    for backend, k in zip(a.backends, a.kills):
        r = kill_and_resume(work / backend, backend=backend, kills=k, prompts=a.prompts, n=a.n,
                            batch_size=a.batch_size, max_tokens=a.max_tokens, seed=a.seed)
        print(f"{backend} ({BACKENDS[backend]}): {r.line()}; {r.episodes} episodes; kills by phase "
              f"{dict(sorted(r.phases.items()))}; inside finish: {r.finish_kills()}", flush=True)
        for note in r.notes:
            print(f"  note: {note}")
        for name in ("kills", "lost", "duplicated", "changed", "episodes"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        for k2, v in r.phases.items():
            total.phases[k2] = total.phases.get(k2, 0) + v
    print(f"work: {work}; {a.prompts} prompts (SPIN, every third quarantined) x n={a.n}, batch {a.batch_size}, "
          f"max_tokens {a.max_tokens}; wall {time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.1f}")
    print(f"kills inside finish: {total.finish_kills()} of {total.kills}; by phase {dict(sorted(total.phases.items()))}")
    print(total.line())


if __name__ == "__main__":
    main()
