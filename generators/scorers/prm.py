"""Process reward model scorer (kind "prm"): a local `AutoModelForTokenClassification` trained on
TRL's stepwise-supervision format scores every step of an answer; the answer's score aggregates
the per-step probabilities of "good" (min, product or last).

    prm = PRMConfig(model="out/prm", aggregation="min").build()       # a PointScorer
    prm.load()
    [r.score for r in prm.evaluate([[{"role": "user", "content": q}]], ["Step 1: ...\nStep 2: ..."])]

Input layout (as TRL's PRMTrainer tokenizes a row): [bos] + prompt tokens + for each step (step
tokens + separator tokens); the label sits on the LAST token of each step + separator. The
prompt is `filters.steps.prompt_text(messages)` (the text the stepwise export writes) and the
answer is cut with the same StepSplitConfig as the step-labels stage. Two labels: softmax,
class `good_label` is "good"; one label: sigmoid. A response with no steps is a failure
(no_steps), quarantined by the scoring stage. Over-long rows keep their start; steps cut off
are not scored (`details.scored_steps` < `n_steps`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from filters.steps import StepSplitConfig, prompt_text, split_steps, step_texts
from generators.backends.base import BackendError, Conversation
from generators.scorers.base import ScoreResult, ScorerConfigBase
from generators.scorers.judge_parse import ParseFailure
from generators.scorers.reward_model import model_folder
from generators.scorers.sequence_classifier import Device, Dtype, resolve_device, resolve_dtype


class PRMConfig(ScorerConfigBase):
    kind: Literal["prm"] = Field("prm", description="scorer kind: process reward model (per-step token classifier)")
    model: str = Field(description="local folder of a token-classification model trained on stepwise labels")
    name: str | None = Field(None, description="short name in the scorer id; default: the model folder's name")
    aggregation: Literal["min", "product", "last"] = Field("min", description="answer score from per-step "
                                                           "P(good): min (weakest step), product, or last step")
    split: StepSplitConfig = Field(default_factory=StepSplitConfig, description="how answers are cut into steps "
                                   "(use the splitter the training labels were made with)")
    separator: str = Field("\n", description="text appended to each step, whose last token carries the label "
                           "(TRL's step_separator; must match training)")
    good_label: int = Field(1, ge=0, description="two-label models: the class index meaning 'good step'")
    batch_size: int = Field(8, ge=1, description="answers per forward pass (does not change scores)")
    max_length: int = Field(4096, ge=16, description="token cap; steps past it are not scored")
    device: Device = Field("auto", description="cpu, cuda, or auto (cuda when available)")
    dtype: Dtype = Field("auto", description="weights dtype; auto = float32 on CPU, bfloat16 on GPU")
    trust_remote_code: bool = Field(False, description="allow custom model code shipped in the folder")

    def display_name(self) -> str:
        return self.name or Path(self.model).name

    def model_folders(self) -> list[str]:
        return [self.model]

    def build(self, *, backend=None) -> ProcessRewardModel:
        return ProcessRewardModel(self)


def prm_inputs(tok, prompt: str, steps: Sequence[str], separator: str) -> tuple[list[int], list[int]]:
    """Token ids and the position of each step's label token, as TRL's PRMTrainer builds them."""
    ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
    sep = tok.encode(separator, add_special_tokens=False)
    positions = []
    for s in steps:
        ids += list(tok(s, add_special_tokens=False)["input_ids"]) + sep
        positions.append(len(ids) - 1)
    if tok.bos_token_id is not None:
        ids = [tok.bos_token_id, *ids]
        positions = [p + 1 for p in positions]
    return ids, positions


def aggregate(probs: Sequence[float], how: str) -> float:
    if how == "min":
        return float(min(probs))
    if how == "product":
        return float(math.prod(probs))
    if how == "last":
        return float(probs[-1])
    raise ValueError(f"unknown aggregation {how!r}; expected min, product or last")


class ProcessRewardModel:
    """A PRM scorer (see the module docstring); implements the point-scorer interface."""

    def __init__(self, cfg: PRMConfig):
        self.cfg = cfg
        self.path = model_folder(cfg.model)
        self._device = resolve_device(cfg.device)
        self._dtype = resolve_dtype(cfg.dtype, self._device)
        self._model = self._tok = None
        self._labels = 0
        self._revision: str | None = None

    @property
    def revision(self) -> str:
        if self._revision is None:
            from generators.models.registry import model_revision

            self._revision = model_revision(self.path)
        return self._revision

    @property
    def id(self) -> str:
        from hashlib import blake2b

        c = self.cfg
        how = blake2b(json.dumps([c.split.model_dump(mode="json"), c.separator, c.good_label]).encode(),
                      digest_size=6).hexdigest()
        return f"prm:{c.display_name()}@{self.revision}:{c.aggregation}:steps#{how}:{self._dtype}:len{c.max_length}"

    @property
    def models(self) -> dict[str, str]:
        return {"process_reward_model": str(self.path), "process_reward_model_revision": self.revision}

    @property
    def templates(self) -> dict[str, str]:
        return {}

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

        if not self.path.is_dir():
            raise BackendError(f"PRM path {str(self.path)!r} does not exist; pass a local model folder")
        mc = AutoConfig.from_pretrained(self.path, local_files_only=True, trust_remote_code=self.cfg.trust_remote_code)
        n = int(getattr(mc, "num_labels", 0))
        if n not in (1, 2) or (n == 2 and self.cfg.good_label > 1):
            raise BackendError(f"PRM {str(self.path)!r} has {n} labels (good_label={self.cfg.good_label}); a PRM has "
                               "2 labels (bad, good) or 1 (sigmoid); train it with trainers/prm.py")
        tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True,
                                            trust_remote_code=self.cfg.trust_remote_code)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForTokenClassification.from_pretrained(
            self.path, dtype=getattr(torch, self._dtype), local_files_only=True,
            trust_remote_code=self.cfg.trust_remote_code)
        self._model, self._tok, self._labels = model.to(self._device).eval(), tok, n

    def close(self) -> None:
        self._model = self._tok = None

    def step_probs(self, prompts: Sequence[Conversation],
                   steps: Sequence[Sequence[str]]) -> list[tuple[list[float], bool]]:
        """Per answer: P(good) of each scored step, and whether steps were cut by max_length."""
        import torch

        if self._model is None:
            raise BackendError("PRM used before load(); call load() first")
        rows = []
        for msgs, st in zip(prompts, steps):
            ids, pos = prm_inputs(self._tok, prompt_text(msgs), st, self.cfg.separator)
            keep = [p for p in pos if p < self.cfg.max_length]
            rows.append((ids[:self.cfg.max_length], keep, len(keep) < len(pos)))
        out: list[tuple[list[float], bool]] = [([], False)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        pad = self._tok.pad_token_id
        for start in range(0, len(order), self.cfg.batch_size):
            idx = order[start:start + self.cfg.batch_size]
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.tensor([rows[i][0] + [pad] * (width - len(rows[i][0])) for i in idx], device=self._device)
            mask = torch.tensor([[1] * len(rows[i][0]) + [0] * (width - len(rows[i][0])) for i in idx],
                                device=self._device)
            with torch.inference_mode():
                logits = self._model(input_ids=ids, attention_mask=mask).logits.float()
            probs = (torch.sigmoid(logits[..., 0]) if self._labels == 1
                     else torch.softmax(logits, dim=-1)[..., self.cfg.good_label]).cpu()
            for j, i in enumerate(idx):
                out[i] = ([float(probs[j, p]) for p in rows[i][1]], rows[i][2])
        return out

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], **extras) -> list[ScoreResult]:
        """Uniform point-scorer interface (generators/scorers/base.py); no extras are used."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")
        steps = [step_texts(r, split_steps(r, self.cfg.split)) for r in responses]
        todo = [i for i, s in enumerate(steps) if s]
        probs = dict(zip(todo, self.step_probs([prompts[i] for i in todo], [steps[i] for i in todo])))
        out = []
        for i, r in enumerate(responses):
            if i not in probs:
                out.append(ScoreResult(score=None, failure=ParseFailure("no_steps", r)))
                continue
            p, cut = probs[i]
            details = json.dumps({"step_probs": p, "n_steps": len(steps[i]), "scored_steps": len(p), "truncated": cut})
            if not p:
                out.append(ScoreResult(score=None, details=details, failure=ParseFailure("too_long", r)))
                continue
            out.append(ScoreResult(score=aggregate(p, self.cfg.aggregation), details=details))
        return out
