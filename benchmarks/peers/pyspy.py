"""Wall-clock profile of one prefmill run with py-spy, summarised as seconds per function.

    profile_prefmill(cmd, out_dir, env=env)      # cmd: the `prefmill run ...` command line
    python benchmarks/peers/pyspy.py RAW_FILE    # re-summarise a recorded profile

py-spy (pinned below, installed into its own virtualenv under PEER_VENVS) samples every thread of
the process and its subprocesses (`--subprocesses`, so the Prefect API server it starts is
included) including idle ones (`--idle`), at RATE Hz, into collapsed stacks. The summary gives
each process's wall share, then for the process that ran the stages the seconds during which a
function was on the stack of a thread doing work (inclusive), and the leaf functions where
non-idle samples landed (self). Seconds = samples / RATE per thread; several threads can run at
once, so inclusive seconds of different threads can add up to more than the wall time.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from infra import PEER_VENVS

PYSPY = "py-spy==0.4.3"
RATE = 50
_IDLE_LEAVES = ("select (selectors.py", "_worker (concurrent/futures/thread.py", "wait (threading.py",
                "poll (selectors.py", "run_forever", "_run_once (asyncio", "sleep", "accept (socket.py")


def ensure_pyspy() -> Path:
    exe = PEER_VENVS / "py-spy" / "bin" / "py-spy"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(exe.parents[1])], check=True)
        subprocess.run([str(exe.parents[1] / "bin" / "pip"), "install", "-q", PYSPY], check=True)
    return exe


def profile_prefmill(cmd: list[str], out: Path, *, env: dict[str, str]) -> str:
    """Run `cmd` under py-spy record; write out/profile.raw and out/profile.txt; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "profile.raw"
    rec = [str(ensure_pyspy()), "record", "--format", "raw", "--idle", "--threads", "--subprocesses", "--rate",
           str(RATE), "-o", str(raw), "--", *cmd]
    with (out / "log.txt").open("w") as log:
        subprocess.run(rec, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out, check=True)
    text = summarize(raw)
    (out / "profile.txt").write_text(text)
    print(text, flush=True)
    return text


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def summarize(raw: Path, *, top: int = 25) -> str:
    """Seconds per process, inclusive seconds per function in the stage process, self seconds per leaf."""
    procs: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    stage_proc = None
    lines = [ln.rsplit(" ", 1) for ln in raw.read_text().splitlines() if ln.strip()]
    for stack, n in lines:
        if "pipelines/" in stack and stage_proc is None:
            stage_proc = _frames(stack)[0]
    for stack, n in lines:
        count, frames = int(n), _frames(stack)
        procs[frames[0]] += count
        if frames[0] != stage_proc:
            continue
        if any(t in frames[-1] for t in _IDLE_LEAVES):
            continue
        for f in set(frames[2:]):
            incl[f] += count
        leaf[frames[-1]] += count
    out = [f"py-spy {RATE} Hz, wall seconds per process (all threads, idle included):"]
    out += [f"  {c / RATE:8.1f} s  {_short(p)}" for p, c in procs.most_common(8)]
    out.append(f"stage process, non-idle thread-seconds on the stack (inclusive), top {top}:")
    out += [f"  {c / RATE:8.1f} s  {_short(f)}" for f, c in incl.most_common(top)]
    out.append(f"stage process, non-idle leaf frames (self), top {top}:")
    out += [f"  {c / RATE:8.1f} s  {_short(f)}" for f, c in leaf.most_common(top)]
    return "\n".join(out)


def _short(frame: str) -> str:
    frame = re.sub(r"/[^ ]*/site-packages/", "", frame)
    return re.sub(r"/work/main/", "", frame)[:160]


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
