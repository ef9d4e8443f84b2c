"""`prefmill models ...`: the embedded default model and the models a store has registered.

    prefmill models pull smollm2          convert the embedded SmolLM2 once; print its folder
    prefmill models list [--store DIR]    built-in models (and whether converted) + trained models
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="pull the embedded model; list built-in and trained models")
    cmds = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    q = cmds.add_parser("pull", help="make a built-in model available locally (converted once, no hub access)")
    q.add_argument("name", help="built-in model name, e.g. smollm2")
    q.set_defaults(func=cmd_pull)
    q = cmds.add_parser("list", help="built-in models and the models registered in a store")
    q.add_argument("--store", default=None, help="store folder or object-store URI, e.g. s3://bucket/prefix (default $PREFMILL_STORE or ./store)")
    q.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    q.set_defaults(func=cmd_list)


def cmd_pull(args: argparse.Namespace) -> int:
    from generators.models.registry import pull

    print(pull(args.name))
    return 0


def _registered(store_root: str | None) -> tuple[list[dict], str | None]:
    """Registered models as dicts, or a note saying why there are none."""
    try:
        from trainers.registry import list_models
    except ImportError:
        return [], "no models are registered yet (trainers are not installed)"
    from pipelines.store import Store, default_root

    root = store_root or default_root()
    try:
        store = Store(root, create=False)
    except ValueError:
        return [], f"no store at {str(root)!r}, so no trained models are registered yet"
    rows = list_models(store).to_dicts()
    return rows, None if rows else "no trained models are registered in this store yet"


def cmd_list(args: argparse.Namespace) -> int:
    from generators.models import smollm2

    builtins = [{"name": smollm2.NAME, "aliases": sorted(k for k, v in smollm2.ALIASES.items() if v == smollm2.NAME),
                 "converted": smollm2.is_converted(), "path": str(smollm2.target_dir())}]
    trained, note = _registered(args.store)
    if args.json:
        json.dump({"builtin": builtins, "registered": trained, "note": note}, sys.stdout, default=str)
        print()
        return 0
    print("built-in models:")
    for b in builtins:
        state = "converted" if b["converted"] else "not converted yet (prefmill models pull smollm2)"
        print(f"  {b['name']:<12} {state}  {b['path']}")
    print("registered models:")
    if note:
        print(f"  {note}")
    for r in trained:
        print(f"  {r.get('name')!s:<24} round {r.get('round')!s:<4} {r.get('path')}")
    return 0
