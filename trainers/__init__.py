"""prefmill trainers: a pinned pair / unpaired / sft table version -> a new registered model, through TRL.

config      PreferenceConfig (loss: sigmoid, ipo, cdpo, simpo, orpo, rpo, kto), RFTConfig, RewardModelConfig,
            PRMConfig, LoraOptions
kinds       the trainer registry: TrainerKind, TRAINERS, get_trainer, parse_training (dpo, kto, rft, reward, prm)
dpo         train_dpo (DPO family; kto delegates to kto.py), build_preference_trainer
kto         train_kto, build_kto_trainer
rft         train_rft (SFT on the top-k scored samples per prompt), build_sft_trainer
reward      train_reward_model (one-label sequence classifier for the scalar RM scorer)
prm         train_prm (process reward model: token classifier on step labels, TRL's stepwise format)
logps       the completion-only log-prob head (exact; CPU default) and CompletionHeadMixin for TRL trainers
packing     backbone passes without padding waste: length groups, each prompt computed once
registry    ModelRecord, register_training, list_models, get_model (the `models` table, stage "train")
reference   next_reference / mix_models (initial, previous, TR-DPO mix), training_data (this_round, accumulate, sdpo)
kl          estimate_kl, kl_from_logprobs, make_kl_fn (for pipelines/evals.py)
dataset     read_tables and the table -> TRL dataset conversions
fit         load / train / save helpers shared by the trainers

Submodules import torch/TRL lazily where they can; import what you use, e.g.
`from trainers.dpo import train_dpo`.
"""
