"""benchmarks/validation_eval.py's added prompts: unused seeds only, the asked split's
constraints (validation or test kinds, never train), and --more-offset keeps two sets disjoint."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from filters import instructions
from pipelines.prompts import prompt_row, prompts_frame

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("validation_eval", ROOT / "benchmarks" / "validation_eval.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_more_prompts = _mod._more_prompts


def _texts(frame):
    return [m[-1]["content"].split("\n\n")[0] for m in frame["messages"].to_list()]


def test_added_prompts_take_unused_seeds_with_the_splits_constraints(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"Write about topic number {i}."}) + "\n" for i in range(30)))
    run = prompts_frame([prompt_row([{"role": "user", "content": f"Write about topic number {i}.\n\nUse no commas."}],
                                    task_type="instruction", source="seed", split="train") for i in range(5)])
    val = _more_prompts(run, str(seeds), 10, 2)
    test = _more_prompts(run, str(seeds), 10, 2, split="heldout", offset=10)
    assert val.height == 10 and test.height == 10
    assert set(val["split"]) == {"validation"} and set(test["split"]) == {"heldout"}
    used = {f"Write about topic number {i}." for i in range(5)}
    assert not (set(_texts(val)) | set(_texts(test))) & used
    assert not set(_texts(val)) & set(_texts(test))
    for frame, split in ((val, "validation"), (test, "test")):
        kinds = {c["kind"] for x in frame["constraints"].drop_nulls() for c in instructions.loads(x)}
        assert kinds and kinds <= set(instructions.kinds_in(split)), (split, kinds)
