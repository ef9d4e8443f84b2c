"""Runs one server command and makes sure it never outlives the process that asked for it.

    python -m generators.backends.server_guard -- python -m vllm.entrypoints.openai.api_server ...

The parent starts this guard in a new session (its own process group) with a pipe on stdin
and keeps the write end. The guard starts the command as its child (with PR_SET_PDEATHSIG, so
a SIGKILL of the guard kills the server too) and stops it when:
- stdin reaches EOF: the parent closed it (`close()`), or the parent died (the kernel closes
  its descriptors, SIGKILL included);
- the guard's parent process changes (the parent died while a forked grandchild still holds the
  pipe open);
- the guard receives SIGTERM/SIGINT/SIGHUP.
Stopping: SIGTERM to the server, up to `--grace` seconds, then SIGKILL to the whole process
group (anything the server spawned). The guard exits with the server's return code when the
server exits by itself.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the guard (a single-threaded process) dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)   # the server's own children too (this guard last)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grace", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the server command")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command; usage: python -m generators.backends.server_guard -- CMD ...")
    if os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)         # lead a process group of our own: the final SIGKILL must not hit the caller's
    parent = os.getppid()
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    while not stop["now"]:
        if proc.poll() is not None:
            return proc.returncode
        if os.getppid() != parent:
            break
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    _stop(proc, a.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
