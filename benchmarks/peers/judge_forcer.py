"""A vLLM logits processor that makes any model end a judge reply with a readable score.

Loaded by the benchmark's vLLM server (`--logits-processors judge_forcer:ForceJudgeScore`, with
benchmarks/peers on PYTHONPATH), so it acts on the requests of every side alike. A request is a
judge request when its prompt contains the rubric's closing instruction (MARKER). For those, the
model generates freely (stop tokens banned) until `max_tokens - len(tail)` tokens, then the tail
"\\nScore: d" is forced, d = crc32(prompt token ids) % 6: a deterministic function of the judged
prompt and response. Other requests are untouched.

Why: a random tiny model (and a 135M one) cannot follow a 5-point rubric, so without this no side
would read a score and no pair would be built; the benchmark measures the pipelines, not the
judge. The judge's compute stays real: the long rubric prompt is prefilled and `max_tokens`
tokens are decoded per reply on every side.
"""
from __future__ import annotations

import zlib
from array import array
from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

if TYPE_CHECKING:
    from vllm.config import VllmConfig

MARKER = 'Conclude with the score using the format: "Score: <total points>"'
SCORES = 6   # the rubric's 0..5


class ForceJudgeScore(LogitsProcessor):
    """See the module docstring."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        self.tails = [self.tok.encode(f"\nScore: {d}", add_special_tokens=False) for d in range(SCORES)]
        stops = {self.tok.eos_token_id, self.tok.pad_token_id, *self.tok.all_special_ids}
        self.stops = sorted(i for i in stops if i is not None)
        # batch index -> (tail token ids, output length at which the tail starts, live output ids)
        self.state: dict[int, tuple[list[int], int, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.state.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            self.state.pop(index, None)
            if not prompt_ids or not params.max_tokens or MARKER not in self.tok.decode(prompt_ids):
                continue
            tail = self.tails[zlib.crc32(array("q", prompt_ids).tobytes()) % SCORES]
            self.state[index] = (tail, max(0, params.max_tokens - len(tail)), output_ids)
        for a, b, direction in batch_update.moved:
            sa, sb = self.state.pop(a, None), self.state.pop(b, None)
            if sa is not None:
                self.state[b] = sa
            if direction == MoveDirectionality.SWAP and sb is not None:
                self.state[a] = sb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, (tail, start, output_ids) in self.state.items():
            k = len(output_ids) - start
            if k < 0:
                logits[index, self.stops] = float("-inf")
            elif k < len(tail):
                logits[index, :] = float("-inf")
                logits[index, tail[k]] = 0.0
        return logits
