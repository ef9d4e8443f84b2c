"""Infrastructure of benchmarks/vs_peers.py: the peers' virtualenvs and the one vLLM server.

    py = ensure_venv("distilabel")                 # /work/peer-venvs/distilabel/bin/python (pinned)
    with VLLMServer(model_dir, name="tiny", kv_gib=1) as url:   # http://127.0.0.1:PORT/v1
        ...

Each peer gets its own virtualenv under PEER_VENVS (outside the repository), created on first
use with the versions pinned in PEERS; pip never touches prefmill's .venv. The server is
`python -m vllm.entrypoints.openai.api_server` from prefmill's .venv (`vllm serve` fails on this
machine) with the judge-score logits processor (judge_forcer.py) loaded, on loopback only.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEER_VENVS = Path(os.environ.get("PREFMILL_PEER_VENVS", "/work/peer-venvs"))
# name -> (pip requirements, the import that proves the venv works, distributions whose versions are reported)
PEERS: dict[str, tuple[list[str], str, list[str]]] = {
    "distilabel": (["distilabel[openai]==1.5.3", "requests==2.34.2"], "distilabel.models",
                   ["distilabel", "openai", "httpx"]),
    "curator": (["bespokelabs-curator==0.1.31"], "bespokelabs.curator", ["bespokelabs-curator", "litellm", "aiohttp"]),
    "data-designer": (["data-designer==0.9.7"], "data_designer.interface", ["data-designer", "data-designer-engine",
                                                                            "httpx"]),
}
# Environment of every peer process: no network calls a competent offline user would not want
# (telemetry, cost-map downloads), caches and artifacts inside the run's own folder.
PEER_ENV = {"TELEMETRY_ENABLED": "false", "NEMO_TELEMETRY_ENABLED": "false", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "HOSTED_VLLM_API_KEY": "EMPTY", "OPENAI_API_KEY": "EMPTY"}


def ensure_venv(name: str) -> Path:
    """The python of peer `name`'s virtualenv, created and installed (pinned) if missing."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    reqs, probe, _ = PEERS[name]
    venv = PEER_VENVS / name
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", f"import {probe}"], capture_output=True).returncode == 0:
        return py
    base = shutil.which("python3.11") or sys.executable
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", *reqs], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(reqs)} into {venv} failed:\n{r.stderr[-3000:]}\n"
                           f"remove {venv} and rerun, or check the package index")
    return py


def versions(name: str) -> str:
    """'dist version, ...' of the peer's reported distributions."""
    py = PEER_VENVS / name / "bin" / "python"
    code = ("import importlib.metadata as m, sys\n"
            "print(', '.join(f'{d} {m.version(d)}' for d in sys.argv[1:]))")
    return subprocess.run([str(py), "-c", code, *PEERS[name][2]], capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A vLLM OpenAI-compatible server on loopback for the duration of a `with` block."""

    def __init__(self, model_dir: Path, *, name: str, log: Path, kv_gib: float = 1.0, max_model_len: int = 2048,
                 startup_s: float = 900.0):
        self.model_dir, self.name, self.log, self.kv_gib = model_dir, name, log, kv_gib
        self.max_model_len, self.startup_s = max_model_len, startup_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        import httpx

        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", "float32", "--enforce-eager", "--max-model-len", str(self.max_model_len),
               "--kv-cache-memory-bytes", str(int(self.kv_gib * (1 << 30))), "--disable-uvicorn-access-log",
               "--logits-processors", "judge_forcer:ForceJudgeScore"]
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(self.kv_gib))),
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}; see {self.log}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"vLLM server did not answer within {self.startup_s:.0f} s; see {self.log}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
