"""Running a padded training batch through the backbone without paying for its padding or for a
prompt twice; used by the completion-only log-prob head (trainers/logps.py).

TRL's preference collator puts a batch of k pairs as 2k right-padded rows, [chosen_1..k,
rejected_1..k], every row padded to the longest; row i and row i+k start with the same prompt.
On the demo's pairs a quarter of the padded positions are padding and half of the real tokens
are the prompt, counted twice. `labelled_hidden` returns the final hidden states of the labelled
(completion) positions only, computed as:

- shared prompts: each prompt runs once (keys and values kept, with gradient), then the chosen
  and the rejected continuations run on top of it with their own positions, so the prompt is
  neither recomputed nor back-propagated twice; and
- length groups: rows (or continuations) are split into groups of similar length, each cut to
  its own longest row (`length_groups`), so padding costs next to nothing.

The hidden states are the ones a single padded forward computes (same positions, same masks;
equal up to float rounding, tested). Anything else — left padding, extra model inputs,
gradient checkpointing, sliding-window or non-attention layers — runs as one plain batch.

    hidden, rows, cols, shape = labelled_hidden(model, args, kwargs, labels, shift_labels)
"""
from __future__ import annotations

from typing import Any

import torch

GROUP_OVERHEAD = 32      # tokens that one more backbone call is worth (its per-op launch costs)
_PLAIN_INPUTS = {"input_ids", "attention_mask", "use_cache"}


def length_groups(lengths: list[int], *, overhead: int = GROUP_OVERHEAD) -> list[list[int]]:
    """Partition row indices into groups of similar length minimising sum(rows x longest row) +
    `overhead` per group (dynamic programming over the rows sorted by length)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sl = [lengths[i] for i in order]
    best, cut = [0] + [0] * len(sl), [0] * (len(sl) + 1)
    for j in range(1, len(sl) + 1):
        best[j], cut[j] = min((best[i] + (j - i) * sl[j - 1] + overhead, i) for i in range(j))
    groups, j = [], len(sl)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def right_padded_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """Row lengths when `mask` is ones then zeros in every row, else None."""
    lengths = mask.sum(1)
    ok = torch.equal(mask.bool(), torch.arange(mask.size(1), device=mask.device) < lengths.unsqueeze(1))
    return lengths if ok else None


def _plain_attention(model: Any) -> bool:
    cfg = model.config.get_text_config()
    types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    return types == {"full_attention"} and not getattr(cfg, "sliding_window", None)


def labelled_hidden(model: Any, args: tuple, kwargs: dict[str, Any], labels: torch.Tensor | None,
                    shift_labels: torch.Tensor | None):
    """Final hidden states [n, H] of the positions whose next-token label is not -100, with their
    (row, column) in the shifted label grid and the grid's shape."""
    kwargs = {**kwargs, "use_cache": False}
    ids, am = kwargs.get("input_ids"), kwargs.get("attention_mask")
    plain = (shift_labels is None and not args and ids is not None and am is not None and set(kwargs) <= _PLAIN_INPUTS
             and ids.size(0) > 1 and not getattr(model, "is_gradient_checkpointing", False))
    lengths = right_padded_lengths(am) if plain else None
    if lengths is None:
        hidden = model.base_model(*args, **kwargs).last_hidden_state
        grid = labels[:, 1:] if shift_labels is None else shift_labels
        if shift_labels is None:
            hidden = hidden[:, :-1]
        rows, cols = (grid != -100).nonzero(as_tuple=True)
        return hidden[rows, cols], rows, cols, grid.shape
    grid = labels[:, 1:] != -100
    shared = _shared_prompts(model, ids, am, grid, lengths) if _plain_attention(model) else None
    if shared is not None:
        return (*shared, grid.shape)
    parts, all_rows, all_cols = [], [], []
    for group in length_groups(lengths.tolist()):
        idx = torch.tensor(group, device=ids.device)
        width = int(lengths[idx].max())
        hidden = model.base_model(input_ids=ids[idx, :width], attention_mask=am[idx, :width],
                                  use_cache=False).last_hidden_state[:, :-1]
        r, c = grid[idx, : width - 1].nonzero(as_tuple=True)
        parts.append(hidden[r, c])
        all_rows.append(idx[r])
        all_cols.append(c)
    return torch.cat(parts), torch.cat(all_rows), torch.cat(all_cols), grid.shape


def _shared_prompts(model: Any, ids: torch.Tensor, am: torch.Tensor, grid: torch.Tensor, lengths: torch.Tensor):
    """(hidden, rows, cols) with each prompt of a [chosen..., rejected...] batch computed once, or
    None when the batch does not have that shape."""
    from transformers import DynamicCache

    n, width = ids.shape
    half = n // 2
    if n % 2 or not bool(grid.any(1).all()):
        return None
    start = grid.int().argmax(1) + 1                 # first completion token of each row
    if not torch.equal(start[:half], start[half:]):
        return None
    pos = torch.arange(width, device=ids.device)
    in_prompt = pos < start[:half, None]
    if not torch.equal(ids[:half][in_prompt], ids[half:][in_prompt]):
        return None
    p_max = int(start.max())
    prompt_mask = in_prompt[:, :p_max].long()
    out = model.base_model(input_ids=ids[:half, :p_max], attention_mask=prompt_mask, use_cache=True)
    cache = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    # the last prompt token predicts the first completion token, for the chosen and the rejected row alike
    last = out.last_hidden_state[torch.arange(half, device=ids.device), start[:half] - 1]
    rows = torch.arange(n, device=ids.device)
    parts, all_rows, all_cols = [torch.cat([last, last])], [rows], [start - 1]
    tail = (lengths - start).tolist()                # completion tokens after the first one, + 1
    for group in length_groups([max(t - 1, 0) for t in tail]):
        idx = torch.tensor(group, device=ids.device)
        steps = max(tail[i] for i in group) - 1
        if steps <= 0:
            continue
        k = torch.arange(steps, device=ids.device)
        at = start[idx, None] + k                    # token positions of this continuation
        valid = k < (lengths[idx, None] - start[idx, None] - 1)
        src = idx % half
        past = DynamicCache(ddp_cache_data=[(key.index_select(0, src), val.index_select(0, src)) for key, val in cache])
        hidden = model.base_model(input_ids=ids[idx].gather(1, at.clamp(max=width - 1)),
                                  attention_mask=torch.cat([prompt_mask[src], valid.long()], 1), position_ids=at,
                                  past_key_values=past, use_cache=True).last_hidden_state
        keep = valid & grid[idx].gather(1, at.clamp(max=width - 2))
        r, c = keep.nonzero(as_tuple=True)
        parts.append(hidden[r, c])
        all_rows.append(idx[r])
        all_cols.append(at[r, c])
    rows, cols = torch.cat(all_rows), torch.cat(all_cols)
    if rows.numel() != int(grid.sum()):
        return None                                  # labels with holes: not the collator's shape
    return torch.cat(parts), rows, cols
