"""`prefmill train`: train one model on pinned table versions and register it in the store.

    prefmill train --data r1_pairs@2 [--data r0_pairs@5 ...] --config train.yaml \\
        [--store DIR] [--policy smollm2|FOLDER] [--reference FOLDER] [--out DIR] [--name NAME]

The config file is a training section: `trainer:` (dpo, kto, rft, reward, prm; default dpo) plus
that trainer's fields (trainers/config.py), e.g.

    trainer: dpo
    loss: sigmoid
    beta: 0.1
    learning_rate: 5.0e-5
    max_steps: 20

A recipe file works too: its `training:` section is used. The model goes to --out (default
<store>/models/NAME) and one row in the store's `models` table (`prefmill models list`), with
lineage and the per-step loss curve in its metrics.

Several processes, each running the same command (GPUs with NCCL; without a GPU, CPU processes
over gloo; accelerate's `--multi_gpu` is its switch for the torch.distributed launcher either
way, while `--cpu` alone starts ONE process; `torchrun --nproc_per_node 2 -m flows.cli train ...`
works too):

    accelerate launch --multi_gpu --num_processes 2 -m flows.cli train --data r1_pairs@2 --config train.yaml --out DIR

Every process trains on its shard of each batch (per-process batch_size; the global batch is
batch_size x processes x grad_accum); only the main process saves the folder and registers the
model, so one row is written however many processes run; all processes must see --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flows.cli import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a model (dpo, kto, rft, reward, prm) on pinned table versions",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, metavar="TABLE@V",
                   help="training table version (repeatable; all of one kind); latest version when no @V")
    p.add_argument("--config", required=True, type=Path, metavar="FILE.yaml",
                   help="training section: trainer + its fields (or a recipe, whose training: section is used)")
    p.add_argument("--store", default=None, help="store folder or object-store URI (default $PREFMILL_STORE or ./store)")
    p.add_argument("--policy", default="smollm2", help="model folder or built-in name to train (default smollm2)")
    p.add_argument("--reference", default=None,
                   help="reference model folder for trainers that use one (default: the policy's own weights)")
    p.add_argument("--out", default=None, type=Path, help="output folder (default <store>/models/NAME)")
    p.add_argument("--name", default=None, help="model name in the models table (default TRAINER-TABLE)")
    p.set_defaults(func=run)


def load_config(path: Path):
    """The config file -> (trainer kind, validated config); every problem is one UserError line."""
    import yaml
    from pydantic import ValidationError

    from trainers.kinds import parse_training

    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass --config FILE.yaml with a training section")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"config {path}: not valid YAML{line}: {getattr(e, 'problem', None) or e}") from None
    if isinstance(data, dict) and isinstance(data.get("training"), dict):
        data = data["training"]
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping like 'trainer: dpo' plus fields, got {type(data).__name__}")
    try:
        return parse_training(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(config)"
        msg = err["msg"].removeprefix("Value error, ")
        hint = "; see the trainer's fields in trainers/config.py" if err["type"] == "extra_forbidden" else ""
        raise UserError(f"config {path}: {key}: {msg}{hint}") from None
    except ValueError as e:
        raise UserError(f"config {path}: {e}") from None


def run(args: argparse.Namespace) -> int:
    from generators.models.registry import resolve_model
    from pipelines.store import Store
    from trainers.dataset import TrainingDataError
    from trainers.registry import is_main_rank

    kind, cfg = load_config(args.config)
    store = Store(args.store, create=False)
    refs = [store.ref(d) for d in args.data]
    allowed = kind.reads(cfg)
    for ref in refs:
        if store.kind(ref.name) not in allowed:
            raise UserError(f"table {ref} holds {store.kind(ref.name)} rows; trainer {kind.name} reads "
                            f"{' or '.join(allowed)} tables")
    policy = resolve_model(args.policy)
    if args.reference is not None and not kind.uses_reference(cfg):
        raise UserError(f"trainer {kind.name} (as configured) uses no reference model; drop --reference")
    reference = (resolve_model(args.reference) if args.reference else policy) if kind.uses_reference(cfg) else None
    name = args.name or f"{kind.name}-{refs[0].name}"
    out = args.out if args.out is not None else store.local_dir("models", name)
    try:
        rec = kind.train(store, data=refs, policy=policy, config=cfg, output_dir=out, name=name, round=None,
                         reference=reference)
    except TrainingDataError as e:
        raise UserError(str(e)) from None
    if is_main_rank():
        curve = rec.metrics.get("loss_curve") or []
        last = f", last loss {curve[-1][1]:.4g}" if curve else ""
        print(f"trained {rec.name} ({rec.trainer}) on {rec.dataset}: {len(curve)} logged steps{last}; "
              f"saved to {rec.path}; registered as model {rec.model_id} in {store.location}")
    return 0
