"""GRPO end to end on a toy task a random tiny model must learn in seconds: answer the prompt with token 7.

The reward here is a plain function of the sampled tokens (no formats, no sandbox), so the test isolates the
RL machinery: rollouts from the sampler, group advantages, the clipped update, mini-batches and the optimizer.
"""

import contextlib

import torch

from echochamber.model import ModelConfig, OLMo
from echochamber.pretrain import make_optimizer
from echochamber.rl import rollout as ro
from echochamber.rl.grpo import group_advantages
from echochamber.rl.train import PromptStream, RLConfig, update
from echochamber.sampler import SampleConfig, generate

EOS, TARGET = 0, 7


def toy_rollout(model, prompts, G, seed):
    gens = generate(model, prompts, SampleConfig(max_new_tokens=3, temperature=1.0, n=G), eos_id=EOS, seed=seed)
    rewards = torch.tensor([float(g.tokens[0] == TARGET) for g in gens])
    return ro.Rollout(problems=[None] * len(prompts), prompt_tokens=[prompts[i // G] for i in range(len(gens))],
                      response_tokens=[g.tokens for g in gens], texts=[""] * len(gens),
                      finished=[g.finished for g in gens], graded=[None] * len(gens), rewards=rewards, group_size=G)


def p_target(model, prompts):
    with torch.no_grad():
        logits = torch.stack([model(torch.tensor([p]))[0, -1] for p in prompts])
    return torch.softmax(logits.float(), -1)[:, TARGET].mean().item()


def test_grpo_learns_a_toy_task():
    torch.manual_seed(0)
    model = OLMo(ModelConfig(preset="custom", d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=32,
                             rope_theta=10000.0, tie_embeddings=True, init_std=0.02).resolve(vocab_size=16))
    cfg = RLConfig(lr=2e-2, minibatch_size=16, epochs=1, warmup_ratio=0.0, kl_coef=0.0, autocast="float32")
    opt = make_optimizer(model, cfg.lr, 0.0, cfg.betas, 1e-8)
    prompts = [[1, 2, 3], [4, 5], [6, 8, 9, 10]]
    before = p_target(model, prompts)
    shuffle = torch.Generator().manual_seed(0)
    opt_step, G, rollouts = 0, 8, 15
    for it in range(rollouts):
        roll = toy_rollout(model, prompts, G, seed=it)
        old = ro.sequence_logprobs(model, roll, 16, EOS, contextlib.nullcontext)
        adv = group_advantages(roll.rewards, G)
        opt_step, stats = update(model, opt, roll, old, None, adv, cfg, EOS, contextlib.nullcontext, opt_step,
                                 rollouts * 2, shuffle)
    after = p_target(model, prompts)
    assert before < 0.15 and after > 0.9, (before, after)


def test_prompt_stream_covers_every_prompt_each_pass_and_resumes():
    s = PromptStream(10, seed=3)
    first = s.take(10)
    assert sorted(first) == list(range(10))
    second = s.take(10)
    assert sorted(second) == list(range(10)) and second != first  # reshuffled each pass
    resumed = PromptStream(10, seed=3, position=10)
    assert resumed.take(10) == second


def test_pad_batch_masks_exactly_the_response_tokens():
    roll = ro.Rollout(problems=[None], prompt_tokens=[[5, 6, 7], [5, 6]], response_tokens=[[1, 2], [3, 4, 0]],
                      texts=["", ""], finished=[False, True], graded=[None, None], rewards=torch.zeros(2),
                      group_size=2)
    idx, mask = ro.pad_batch(roll, [0, 1], pad_id=0)
    assert idx.tolist() == [[5, 6, 7, 1, 2], [5, 6, 3, 4, 0]]
    # mask[b, t] marks target idx[b, t + 1] as a response token
    assert mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
