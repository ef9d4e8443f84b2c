"""`prefmill scorers check SCORER --pairs NAME[@VERSION] [--other SCORER] [--prompts NAME] [--json]`.

SCORER is a YAML file with a scorer config (`kind: rm`, `model: ...`), or the name of a kind
whose defaults are complete (rule_instructions, rule_math, judge, pairwise_judge, critique: the
judges then use the default backend). Prints accuracy on the labelled pairs (chosen should win),
agreement with --other, and the position-bias rate of a pairwise judge. With --min-accuracy the
exit code is 1 when the scorer falls below it.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _scorer(text: str):
    from flows.cli import UserError
    from generators.scorers.config import kinds, load_scorer_config, parse_scorer_config

    if Path(text).is_file():
        return load_scorer_config(text)
    if text in kinds():
        from pydantic import ValidationError

        try:
            return parse_scorer_config({"kind": text})
        except ValidationError as e:
            fields = sorted({str(err["loc"][-1]) for err in e.errors()})
            raise UserError(f"scorer kind {text!r} needs settings ({', '.join(fields)}); write them in a YAML "
                            f"file (kind: {text}) and pass its path") from None
    raise UserError(f"scorer {text!r} is neither a YAML file nor a scorer kind; pass a path to a YAML config "
                    f"or one of: {', '.join(kinds())}")


def register(subparsers) -> None:
    p = subparsers.add_parser("scorers", help="check scorers on labelled pairs", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="scorers_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser("check", help="accuracy / agreement / position bias of a scorer on a pairs table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("scorer", metavar="SCORER_YAML_OR_NAME", help="scorer config YAML, or a scorer kind name")
    c.add_argument("--pairs", required=True, metavar="NAME[@VERSION]", help="labelled pairs table (chosen wins)")
    c.add_argument("--other", default=None, metavar="SCORER_YAML_OR_NAME", help="second scorer for agreement")
    c.add_argument("--prompts", default=None, metavar="NAME[@VERSION]",
                   help="prompts table (constraints / references for rule scorers and critiques)")
    c.add_argument("--min-accuracy", type=float, default=None, help="exit 1 if accuracy is below this")
    c.add_argument("--store", default=None, help="store folder or object-store URI, e.g. s3://bucket/prefix (default $PREFMILL_STORE or ./store)")
    c.add_argument("--json", action="store_true", help="print the result as one JSON object")
    c.set_defaults(func=run_check)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else str(v)


def run_check(args: argparse.Namespace) -> int:
    from pipelines.scorer_check import ScorerCheckError, check_scorer, require_accuracy
    from pipelines.store import Store

    store = Store(args.store, create=False)
    other = _scorer(args.other) if args.other else None
    result = check_scorer(store, _scorer(args.scorer), args.pairs, other=other, prompts=args.prompts)
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {_fmt(v)}")
    if args.min_accuracy is not None:
        try:
            require_accuracy(result, args.min_accuracy)
        except ScorerCheckError as e:
            import sys

            print(f"prefmill: {e}", file=sys.stderr)
            return 1
    return 0
