"""RLConfig: the `rl` section of a run config. The paper's value is written beside each default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..checks import check
from .ei import EIConfig
from .ppo import PPOConfig

ALGOS = ("grpo", "ppo", "ei", "rloo", "drgrpo", "reinforce_pp", "reinforce_baseline")


@dataclass
class RLConfig:
    algo: Literal["grpo", "ppo", "ei", "rloo", "drgrpo", "reinforce_pp", "reinforce_baseline"] = "grpo"  # rl/<algo>.py
    # (the authors' sweep: ppo, reinforce_baseline, grpo; and ei)
    seed: int | None = None  # prompt order, sampling, shuffling; None = the run's top-level `seed`
    init: str | None = None  # model folder to start from (default OUT_DIR/pretrain/model)
    train_source: str = "synthetic:train"  # prompts, SOURCE:SPLIT (paper: gsm8k:train, 7473 questions)
    train_problems: int = 5000  # prompts drawn from train_source (0 = all of a file-backed source)
    steps: int = 40  # rollouts (paper: about 1160, i.e. 10 passes over GSM8K train); EI: see ei.rounds
    prompts_per_step: int = 64  # P (paper: 64)
    samples_per_prompt: int = 8  # G (paper: 8)
    temperature: float = 0.7  # rollout sampling temperature (paper: 0.7)
    top_p: float = 1.0  # (paper: 1.0)
    max_new_tokens: int = 320  # (paper: 1024)
    rollout_chunk_prompts: int = 0  # prompts per generate call, each call seeded by its place in the step; 0 = all of
    # a process's share (at most 512 rows). Equal values give equal samples whatever the number of processes.
    minibatch_size: int = 64  # sequences per optimizer step (paper: 64, so 8 optimizer steps per rollout)
    micro_batch_size: int = 0  # sequences per forward/backward inside a mini-batch (0 = the whole mini-batch)
    epochs: int = 1  # passes over each rollout (paper: 1)
    lr: float = 1e-6  # actor learning rate (paper: 1e-6, for 150M/1B models)
    min_lr_ratio: float = 0.1  # cosine decays to this fraction (paper: 1e-6 -> 1e-7)
    warmup_ratio: float = 0.03  # of all optimizer steps (paper: 3%)
    betas: tuple[float, float] = (0.9, 0.95)  # (paper)
    weight_decay: float = 0.0  # (paper: 0)
    grad_clip: float = 1.0  # (paper: 1.0)
    clip_eps: float = 0.2  # ratio clip (paper: 0.2)
    kl_coef: float = 0.0  # beta, KL to the pretrained model (paper sweeps 0, 1e-3, 1e-2); 0 = no reference model is
    # held, and the logged kl_k1 / kl_k3 measure the drift from the rollout policy instead
    kl_in: Literal["auto", "loss", "reward"] = "auto"  # where the KL acts; auto = the algorithm's own (GRPO, Dr.
    # GRPO: loss, as the GRPO paper; PPO, REINFORCE++, RLOO: per-token reward, as OpenRLHF and the paper's PPO)
    kl_estimator: Literal["auto", "k1", "k2", "k3"] = "auto"  # auto = k3 in the loss, k1 in the reward (paper)
    kl_grad: bool = True  # false: a KL loss term is computed but carries no gradient, which is what the authors'
    # packed-sample GRPO runs did (PAPER.md); their GRPO figures match kl_grad=false (or kl_coef=0)
    logprob_temperature: float = 1.0  # log-probs for the ratio and KL from logits / this (paper: the rollout
    # temperature, 0.7; 1 = the plain model)
    adv_eps: float = 1e-9  # GRPO: A = (r - mean) / (std + adv_eps) (paper: 1e-9)
    loss_agg: Literal["token", "sequence", "constant"] = "token"  # per-token mean (OpenRLHF), per-sequence mean
    # (GRPO paper) or per-sequence sum / max_new_tokens (Dr. GRPO, which sets it itself)
    mode: Literal["paper", "structure"] = "structure"  # format labelling for rewards (see formats.py)
    interpreter: bool = False  # rollouts with the sandbox in the loop: each closed <llm-code> block runs and its real
    # output is written for the policy to go on from (interpreter.py); those tokens get no loss, KL or advantage.
    # Paper: off (its policy invented its outputs)
    reward_sees_prompt: bool = True  # the paper hands the reward function prompt + response
    autocast: Literal["bfloat16", "float32"] = "bfloat16"  # update and log-prob precision
    sample_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # rollout generation precision (bf16 ~2x faster on CPU)
    sample_compile: Literal["auto", "on", "off"] = "auto"  # torch.compile the rollouts' decode step (as eval.*)
    eval_every: int = 10  # RL steps between evaluations (step 0 and the last step always; EI: every round)
    ckpt_every: int = 10  # RL steps between checkpoints (EI: every round)
    keep_checkpoints: Literal["log", "last", "all"] = "log"  # log: checkpoints 1, 2, 4, 8, ... x ckpt_every and the
    # latest (the paper kept log-spaced checkpoints to evaluate transfer on); last: only the latest; all
    keep_rollouts: bool = True  # write rollouts/step_N.jsonl
    threads: int = 0  # torch intra-op threads; 0 = all cores
    ppo: PPOConfig = field(default_factory=PPOConfig)  # rl.algo=ppo: the critic and GAE
    ei: EIConfig = field(default_factory=EIConfig)  # rl.algo=ei: rounds, sampling and SFT

    def __post_init__(self):
        check(self, at_least_1=("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "minibatch_size",
                                "epochs", "eval_every", "ckpt_every"),
              at_least_0=("micro_batch_size", "train_problems", "rollout_chunk_prompts", "kl_coef", "temperature", "weight_decay", "threads"),
              positive=("lr", "clip_eps", "logprob_temperature", "grad_clip"), unit=("min_lr_ratio",),
              unit_open=("top_p",))
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.algo in ("grpo", "rloo", "drgrpo", "reinforce_baseline") and self.samples_per_prompt < 2:
            raise ValueError(f"rl.algo={self.algo} compares the samples of a prompt: samples_per_prompt must be "
                             f">= 2, got {self.samples_per_prompt}")
