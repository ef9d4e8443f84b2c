"""The dialogue stage: seed prompts -> multi-turn conversations in a `prompts` table (Nemotron-4
340B: the model plays both the user and the assistant).

    ref = dialogue_stage(store, policy, None, DialogueConfig(turns=3), prompts="prompts",
                         output="dialogues")

Each output row's `messages` hold every turn up to and including the last USER turn, so the
sampling, scoring (judges see the whole conversation), pairing and export stages work on the
final assistant turn unchanged. `source` = "dialogue:<dialogue_id>:<seed prompt_id>"; task_type,
topic_id and split come from the seed (held-out seeds stay held out); constraints and reference
are kept only when the dialogue is still the seed's single turn (they describe the first turn).
Persona and goal are drawn per seed by hash (generators.dialogue.pick), so a rerun draws the same.

Resume: dialogue_id = hash(seed prompt_id, config without batch_size, models, template hash).
Whole dialogues commit per batch of seeds (every turn of the batch runs, then one commit of the
finished rows plus one of the quarantined ones), so a half-built conversation is never written: a
SIGKILL loses at most the batch in flight and the rerun regenerates exactly those dialogues.
Quarantined (reason): seed_not_user_turn, empty_turn:<role>, repeated_turn:<role>,
generation_error:<role>, too_short:goal_reached, duplicate_dialogue. `process_batch` holds the
per-batch logic (for the stage driver).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from generators import dialogue
from generators.backends.base import Backend, Sampling
from generators.backends.factory import BackendConfig
from pipelines import keys
from pipelines.schemas import get_schema
from pipelines.driver import Batch, Identity, Item, Usage, WorkBase, drive
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.dialogue")
Progress = Callable[[int, int], None]


class RoleSampling(BaseModel):
    """Sampling of one role's turns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    max_tokens: int = Field(256, ge=1, description="longest turn in tokens")

    def sampling(self) -> Sampling:
        return Sampling(n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens)


class DialogueConfig(BaseModel):
    """How seed prompts grow into multi-turn dialogues."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    turns: int = Field(3, description="user turns per dialogue, the seed's included (>= 1; 1 = the seed as is)")
    min_turns: int | None = Field(None, description="fewer user turns when the goal is reached -> quarantined "
                                  "(too_short); default min(2, turns)")
    personas: tuple[str, ...] = Field(dialogue.PERSONAS, description="user personas, one drawn per seed by hash")
    goals: tuple[str, ...] = Field(dialogue.GOALS, description="user goals, one drawn per seed by hash")
    user_model: BackendConfig | None = Field(None, description="separate user-simulator model; None = the policy "
                                             "also plays the user")
    user: RoleSampling = Field(RoleSampling(temperature=0.8, max_tokens=128), description="sampling of user turns")
    assistant: RoleSampling = Field(RoleSampling(), description="sampling of assistant turns")
    seed: int = Field(0, description="sampling seed (per batch and turn, derived with the batch's first key)")
    repeat_threshold: float = Field(0.8, gt=0, le=1, description="a new turn of >= 8 words with this share of "
                                    "its word 3-grams in one earlier turn is a repeat (quarantined)")
    done_marker: str = Field(dialogue.DONE_MARKER, description="what the simulator writes when the goal is reached")
    template: str = Field(dialogue.TEMPLATE, description="Jinja template of the user simulator")
    template_dir: str | None = Field(None, description="folder overriding generators/templates")
    batch_size: int = Field(16, ge=1, description="dialogues advanced together and committed together (not in keys)")

    @field_validator("turns")
    @classmethod
    def _turns(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"turns={v}; use turns >= 1 (user turns per dialogue, e.g. turns: 3)")
        return v

    @field_validator("personas", "goals")
    @classmethod
    def _options(cls, v: tuple[str, ...], info) -> tuple[str, ...]:
        if not v or any(not s.strip() for s in v):
            raise ValueError(f"{info.field_name} is empty or has a blank entry; list at least one non-blank "
                             f"{info.field_name[:-1]}")
        return v

    @model_validator(mode="after")
    def _check(self) -> DialogueConfig:
        if self.min_turns is not None and not 1 <= self.min_turns <= self.turns:
            raise ValueError(f"min_turns={self.min_turns} with turns={self.turns}; use 1 <= min_turns <= turns")
        if not self.done_marker.strip():
            raise ValueError("done_marker is blank; use a distinctive string such as [[GOAL_REACHED]]")
        return self

    @property
    def least_turns(self) -> int:
        return self.min_turns if self.min_turns is not None else min(2, self.turns)


def _model(b: Backend) -> dict:
    return {"id": b.model_id, "revision": b.revision}


def dialogue_ids(seed_ids: Sequence[str], cfg: DialogueConfig, models: dict, templates: dict) -> list[str]:
    """hash(seed prompt_id, config without batch_size, models, template hash) per seed."""
    conf = cfg.model_dump(mode="json", exclude={"batch_size"})
    return [keys.content_hash("dialogue", pid, conf, models, templates) for pid in seed_ids]


def process_batch(policy: Backend, user: Backend, cfg: DialogueConfig, seeds: Sequence[dict], ids: Sequence[str],
                  *, taken: set[str]) -> tuple[pl.DataFrame, list[tuple[str, str, object]], Usage]:
    """Run the dialogues of one batch of seed rows to their ends: (prompts rows, quarantine rows,
    what the model calls spent).
    `taken` holds prompt_ids of this config's dialogues so far (a duplicate final conversation is
    quarantined as duplicate_dialogue)."""
    states = [dialogue.DialogueState.start(did, s["messages"], persona=dialogue.pick(cfg.personas, s["prompt_id"],
                                                                                     "persona"),
                                           goal=dialogue.pick(cfg.goals, s["prompt_id"], "goal"))
              for s, did in zip(seeds, ids)]
    first = ids[0] if ids else ""

    def seed_of(turn: int, role: str) -> int:
        return int(keys.content_hash("dialogue-seed", cfg.seed, first, turn, role)[:8], 16)

    calls, prompt_tokens, completion_tokens = dialogue.run_dialogues(
        states, policy, user, turns=cfg.turns, min_turns=cfg.least_turns, user_sampling=cfg.user.sampling(),
        assistant_sampling=cfg.assistant.sampling(), seed_of=seed_of, marker=cfg.done_marker, template=cfg.template,
        template_dir=cfg.template_dir, repeat_threshold=cfg.repeat_threshold)
    rows, bad, seen = [], [], set(taken)
    for s, st in zip(seeds, states):
        payload = {"seed_prompt_id": s["prompt_id"], "persona": st.persona, "goal": st.goal,
                   "messages": st.messages, "generations": st.raw, "stop": st.stop}
        pid = keys.prompt_id(st.messages) if st.reason is None else None
        reason = st.reason or ("duplicate_dialogue" if pid in seen else None)
        if reason:
            bad.append((st.key, reason, payload))
            continue
        seen.add(pid)
        single = len(st.messages) == len(s["messages"])
        rows.append({"prompt_id": pid, "messages": st.messages, "task_type": s["task_type"],
                     "constraints": s["constraints"] if single else "[]",
                     "reference": s["reference"] if single else None,
                     "source": f"dialogue:{st.key}:{s['prompt_id']}", "topic_id": s["topic_id"], "split": s["split"]})
    return (pl.DataFrame(rows, schema=get_schema("prompts").schema), bad,
            Usage(calls=calls, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))


def _committed(store: Store, output: str) -> dict[str, str]:
    """dialogue_id -> prompt_id of the dialogue rows already in `output`."""
    if not store.exists(output):
        return {}
    out = store.read(output, columns=["prompt_id", "source"]).filter(pl.col("source").str.starts_with("dialogue:"))
    return {src.split(":")[1]: pid for pid, src in out.iter_rows()}


class DialogueWork(WorkBase):
    """The dialogue stage on the stage driver: one item per seed prompt (keyed by its dialogue
    id); done = its dialogue row is committed or it was quarantined. Whole dialogues commit per
    batch, so a crash loses at most the batch in flight and never leaves half a conversation."""

    def __init__(self, store: Store, policy: Backend, user: Backend, cfg: DialogueConfig, *, prompts: TableRef,
                 output: str):
        for role, b in (("policy", policy), ("user", user)):
            if not b.revision:
                raise ValueError(f"{role} backend {b.model_id!r} has no revision; call load() before the dialogue stage")
        self.store, self.policy, self.user, self.cfg, self.prompts, self.output = store, policy, user, cfg, prompts, output
        self.models = {"policy": _model(policy), "user": _model(user)}
        self.templates = dialogue.template_hashes(cfg.template, cfg.template_dir)
        self.identity = Identity(stage="dialogue", output=output, kind="prompts", parents=(prompts,),
                                 config=cfg.model_dump(mode="json", exclude={"batch_size"}), models=self.models,
                                 templates=self.templates)
        self.seeds: list[dict] = []
        self.ids: list[str] = []
        self.target: set[str] = set()

    def prepare(self, run) -> None:
        self.seeds = self.store.read(self.prompts).sort("prompt_id").to_dicts()
        self.ids = dialogue_ids([s["prompt_id"] for s in self.seeds], self.cfg, self.models, self.templates)

    def total_units(self) -> int:
        return len(self.seeds)

    def todo(self, done: set[str]) -> list[Item]:
        have = {d: p for d, p in _committed(self.store, self.output).items() if d in set(self.ids)}
        self.target = set(have.values())   # + rows made now (a row an earlier config already holds is kept)
        done = done | set(have)
        return [Item(d, s) for s, d in zip(self.seeds, self.ids) if d not in done]

    def process(self, items: list[Item]) -> Batch:
        rows, bad, usage = process_batch(self.policy, self.user, self.cfg, [it.payload for it in items],
                                  [it.key for it in items], taken=self.target)
        self.target.update(rows.get_column("prompt_id").to_list())
        return Batch(rows=rows, bad=bad, usage=usage)

    def target_keys(self) -> list[str]:
        return sorted(self.target)


def dialogue_stage(store: Store, policy_backend: Backend, user_backend: Backend | None, cfg: DialogueConfig, *,
                   prompts: str | TableRef, output: str = "dialogues", progress: Progress | None = None) -> TableRef:
    """Grow every seed prompt into a dialogue (see the module docstring); returns the completed
    output version. Backends must be loaded (revisions enter the keys); user_backend None = policy."""
    user = user_backend if user_backend is not None else policy_backend
    work = DialogueWork(store, policy_backend, user, cfg, prompts=store.ref(prompts), output=output)
    ref = drive(store, work, batch_size=cfg.batch_size, progress=progress)
    log.info("dialogue: %d seeds, %d dialogues kept", len(work.seeds), len(work.target))
    return ref
