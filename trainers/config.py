"""Trainer configs: one frozen pydantic model per trainer, every field with help text.

    cfg = PreferenceConfig(loss="sigmoid", beta=0.1, learning_rate=1e-6, max_steps=50)
    cfg = PreferenceConfig(loss="simpo", beta=2.0, simpo_gamma=0.5, lora=LoraOptions(r=8))

How each `loss` maps onto TRL 1.16 (checked against the installed source):

| loss    | TRL trainer           | TRL settings                                                       |
|---------|-----------------------|--------------------------------------------------------------------|
| sigmoid | DPOTrainer            | loss_type=["sigmoid"]                                              |
| ipo     | DPOTrainer            | loss_type=["ipo"] (TRL length-normalises the log-ratios)           |
| cdpo    | DPOTrainer            | loss_type=["sigmoid","robust"], weights [2-2e, -(1-2e)], e=label_smoothing |
| rpo     | DPOTrainer            | loss_type=["sigmoid","sft"], weights [1, rpo_alpha]                |
| simpo   | CPOTrainer (experimental) | loss_type="simpo", cpo_alpha=0, simpo_gamma                    |
| orpo    | ORPOTrainer (experimental) | beta = ORPO's lambda                                          |
| kto     | KTOTrainer            | loss_type="kto", desirable/undesirable weights                     |

cDPO: TRL 1.16's sigmoid loss no longer reads `label_smoothing`. With a = -log s(bD) and
-log s(-bD) = a + bD, cDPO's (1-e)a + e(a + bD) = a + e*bD, and TRL's robust loss is
a - e*bD/(1-2e); so (2-2e)*sigmoid - (1-2e)*robust is exactly cDPO, built from TRL's own losses.
RPO: TRL 1.16 has no `rpo_alpha`; its "sft" loss is the NLL of the chosen completion (mean per
token), which is RPO's extra term.
"""
from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from generators.backends.precision import cpu_native_bf16, resolve_dtype

Loss = Literal["sigmoid", "ipo", "cdpo", "simpo", "orpo", "rpo", "kto"]
LOSSES: tuple[str, ...] = get_args(Loss)
REFERENCE_FREE: frozenset[str] = frozenset({"simpo", "orpo"})
RefUpdate = Literal["fixed", "soft", "hard"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LoraOptions(_Frozen):
    """LoRA through PEFT. The adapter is merged into the saved folder by default, so the next
    round (vLLM, transformers, TRL) loads a plain model."""

    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | tuple[str, ...] = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' (every linear layer but the LM head) or names.")
    merge: bool = Field(True, description="Merge the adapter into the base weights when saving (False: save the adapter only).")

    def to_peft(self, task_type: Literal["CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS"]):
        from peft import LoraConfig

        targets: Any = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          task_type=task_type, bias="none")


class TrainArgs(_Frozen):
    """Options every trainer shares (optimiser, schedule, batch, length, seed, LoRA)."""

    learning_rate: float = Field(1e-6, gt=0, description="Peak AdamW learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data; ignored when max_steps > 0.")
    max_steps: int = Field(-1, description="Optimizer steps to run; -1 = run `epochs` epochs.")
    batch_size: int = Field(8, ge=1, description="Per-device train batch size (pairs per micro-batch).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps per optimizer step.")
    max_length: int = Field(1024, ge=8, description="Max tokens of prompt + completion; longer rows are truncated.")
    seed: int = Field(0, description="Seed for init, data order and dropout.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (about 20-30% slower).")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32", description="Training precision: bfloat16 = mixed precision (autocast, float32 weights and "
                               "optimizer); auto = bfloat16 on a GPU or a CPU with native bf16 (AVX512-BF16/AMX), "
                               "float32 otherwise.")
    lora: LoraOptions | None = Field(None, description="Train a LoRA adapter instead of all weights (None = full fine-tuning).")
    logging_steps: int = Field(1, ge=1, description="Log metrics every N steps (the registry keeps the last logged values).")
    logprob_head: Literal["auto", "completion", "trl"] = Field(
        "auto", description="Token log-prob head of the DPO family, KTO and RFT: 'completion' projects only the "
                            "completion tokens through the vocabulary, in length groups (exact, much faster on CPU; "
                            "holds the completion tokens' probabilities in memory), 'trl' keeps TRL's fused chunked "
                            "head, 'auto' = completion without CUDA, trl with it. Reward models ignore it.")

    @model_validator(mode="after")
    def _steps(self):
        if self.dtype == "auto":
            cpu_native_bf16()   # a bad PREFMILL_CPU_BF16 is a config error, before anything is written
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps={self.max_steps}; use a positive step count or -1 to run `epochs` epochs")
        return self

    @property
    def precision(self) -> str:
        """`dtype` resolved on this machine: float32 or bfloat16 (auto: bfloat16 where it is native)."""
        # a GPU without bf16 trains in float32 (float16 training would need a loss scaler)
        return "bfloat16" if resolve_dtype(self.dtype) == "bfloat16" else "float32"

    def trl_kwargs(self, output_dir: str) -> dict[str, Any]:
        """TrainingArguments fields shared by every TRL config."""
        import torch

        # Without a GPU, bf16 must be asked for as CPU autocast (use_cpu) or TrainingArguments refuses it.
        return dict(use_cpu=not torch.cuda.is_available(), output_dir=output_dir,
                    learning_rate=self.learning_rate, num_train_epochs=self.epochs, max_steps=self.max_steps,
                    per_device_train_batch_size=self.batch_size,
                    gradient_accumulation_steps=self.grad_accum, seed=self.seed, data_seed=self.seed,
                    lr_scheduler_type=self.lr_scheduler, warmup_steps=self.warmup_steps,
                    weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm,
                    gradient_checkpointing=self.gradient_checkpointing, bf16=self.precision == "bfloat16",
                    logging_steps=self.logging_steps, save_strategy="no", report_to=[], disable_tqdm=True,
                    dataloader_num_workers=0, max_length=self.max_length)


class PreferenceConfig(TrainArgs):
    """The DPO family (sigmoid, ipo, cdpo, rpo, simpo, orpo) and KTO on preference data."""

    loss: Loss = Field("sigmoid", description="Preference loss: " + ", ".join(LOSSES) + " (see the module table).")
    beta: float = Field(0.1, gt=0, description="DPO/IPO/cDPO/RPO/KTO: KL strength beta (IPO: tau). SimPO: reward "
                                               "scale beta (the paper uses 2.0-2.5). ORPO: the odds-ratio weight lambda.")
    label_smoothing: float = Field(0.1, gt=0, lt=0.5, description="cdpo only: assumed probability that a label is flipped.")
    rpo_alpha: float = Field(1.0, gt=0, description="rpo only: weight of the chosen-completion NLL term.")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo only: target reward margin gamma.")
    ld_alpha: float | None = Field(None, ge=0, le=1, description="LD-DPO (Liu et al. 2024, length desensitization): "
                                   "the log-probs of the longer answer's tokens past the shorter one's length count "
                                   "alpha times (1 = plain DPO, 0 = masked), so the loss cannot be lowered by length "
                                   "alone; sigmoid, ipo, cdpo, rpo only (TRL's ld_alpha). None = off.")
    desirable_weight: float = Field(1.0, gt=0, description="kto only: weight of desirable rows' losses.")
    undesirable_weight: float = Field(1.0, gt=0, description="kto only: weight of undesirable rows' losses.")
    ref_update: RefUpdate = Field(
        "fixed", description="Reference during training: fixed, soft (TR-DPO: ref = a*policy + (1-a)*ref every "
                             "ref_sync_steps) or hard (copy the policy every ref_sync_steps). TRL's sync_ref_model.")
    ref_alpha: float = Field(0.6, gt=0, le=1, description="soft update weight alpha (hard update uses 1.0).")
    ref_sync_steps: int = Field(64, ge=1, description="Steps between reference updates (TR-DPO tau).")
    precompute_ref_log_probs: bool | None = Field(
        None, description="Compute the reference log-probs once, before the first step, instead of a reference "
                          "forward pass every step (the reference model is then freed). None = on whenever the "
                          "reference is fixed (ref_update='fixed') and the loss has one; True with ref_update soft/hard "
                          "is an error.")

    @field_validator("loss", mode="before")
    @classmethod
    def _known_loss(cls, v: Any) -> Any:
        if v not in LOSSES:
            raise ValueError(f"unknown loss {v!r}; expected one of {', '.join(LOSSES)}")
        return v

    @model_validator(mode="after")
    def _reference_options(self):
        if self.ld_alpha is not None and self.loss in ("simpo", "orpo", "kto"):
            raise ValueError(f"ld_alpha with loss={self.loss!r}: length desensitization is TRL's DPOTrainer option; "
                             "use loss sigmoid, ipo, cdpo or rpo, or drop ld_alpha")
        if self.ref_update != "fixed":
            if self.loss in REFERENCE_FREE:
                raise ValueError(f"ref_update={self.ref_update!r} with loss={self.loss!r}, which has no reference "
                                 "model; use ref_update='fixed'")
            if self.lora is not None:
                raise ValueError(f"ref_update={self.ref_update!r} needs full fine-tuning (TRL 1.16 cannot sync a "
                                 "reference with a LoRA policy); set lora=None or ref_update='fixed'")
            if self.precompute_ref_log_probs:
                raise ValueError("precompute_ref_log_probs=True assumes a fixed reference; set ref_update='fixed' "
                                 "or precompute_ref_log_probs=None")
        return self

    @property
    def reference_free(self) -> bool:
        return self.loss in REFERENCE_FREE

    @property
    def precompute(self) -> bool:
        """Whether reference log-probs are computed once before training (the resolved setting)."""
        if self.precompute_ref_log_probs is not None:
            return self.precompute_ref_log_probs and not self.reference_free
        return self.ref_update == "fixed" and not self.reference_free

    @property
    def trainer_name(self) -> str:
        return {"simpo": "cpo", "orpo": "orpo", "kto": "kto"}.get(self.loss, "dpo") + f"/{self.loss}"


class RFTConfig(TrainArgs):
    """Rejection-sampling fine-tuning: SFT on the top-scored samples per prompt."""

    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate.")
    top_k: int | None = Field(None, ge=1, description="Samples kept per prompt (highest score first; ties by row_id); "
                              "None = every row of the sft table (a recipe chooses them in pairs.top_k, rft_topk).")
    min_score: float | None = Field(None, description="Drop samples scoring below this (None = keep the top_k whatever they score).")


class RewardModelConfig(TrainArgs):
    """Bradley-Terry reward model from pairs (TRL RewardTrainer)."""

    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate.")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Weight of the loss that keeps rewards centred on zero (None = off).")


class PRMConfig(TrainArgs):
    """Process reward model: token classification on step labels (TRL's stepwise-supervision format;
    the layout is in trainers/prm.py)."""

    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate.")
    step_separator: str = Field("\n", min_length=1, description="Text appended to every step; the label sits on the "
                                                                "last token of step + separator (the scorer must use "
                                                                "the same).")
    train_on_last_step_only: bool = Field(False, description="Label only the last step (outcome supervision); "
                                                             "the other steps get no loss.")
    max_completion_length: int | None = Field(None, ge=1, description="Cap on the tokens of all steps together "
                                                                      "(the start is kept); None = no cap.")
