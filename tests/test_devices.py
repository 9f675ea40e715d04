"""What a GPU run needs of the training mechanics, checked on a CPU: every tensor handed to a collective lives on
the process's device (NCCL takes nothing else), a checkpoint written on one device resumes on another, and the
RL update reads nothing back from the device per micro-batch."""

import contextlib

import pytest
import torch
import torch.distributed

from echochamber import distributed as dist
from echochamber.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from echochamber.model import ModelConfig, OLMo
from echochamber.rl import rollout as ro
from echochamber.rl.config import RLConfig
from echochamber.rl.grpo import GRPO
from echochamber.rl.ppo import PPO, PPOConfig
from echochamber.rl.reinforce_pp import ReinforcePP
from echochamber.training import make_optimizer, trainer_state
from conftest import count_host_reads


def tiny_model(tied: bool = True) -> OLMo:
    return OLMo(ModelConfig(preset="custom", d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=32,
                            rope_theta=10000.0, tie_embeddings=tied, init_std=0.02).resolve(vocab_size=12))


def tiny_rollout(n_prompts: int = 2, group: int = 4, seed: int = 0) -> ro.Rollout:
    """n_prompts x group samples of random tokens (ragged responses, EOS 0 last) with 0/1 rewards."""
    g = torch.Generator().manual_seed(seed)
    n = n_prompts * group
    prompts = [torch.randint(1, 12, (3,), generator=g).tolist() for _ in range(n_prompts)]
    responses = [torch.randint(1, 12, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist() + [0]
                 for _ in range(n)]
    return ro.Rollout(problems=[None] * n_prompts, prompt_tokens=[prompts[i // group] for i in range(n)],
                      response_tokens=responses, texts=[""] * n, finished=[True] * n, graded=[None] * n,
                      rewards=torch.randint(0, 2, (n,), generator=g).float(), group_size=group)


def algorithm(cls, ctx=None, **rl):
    torch.manual_seed(0)
    cfg = RLConfig(algo=cls.name, steps=1, prompts_per_step=2, samples_per_prompt=4, autocast="float32",
                   **{"minibatch_size": 4, "kl_coef": 0.01, **rl})
    kw = dict(pad_id=0, autocast=contextlib.nullcontext, device="cpu", ctx=ctx)
    if cls is PPO:
        cfg.ppo = PPOConfig(normalize_reward=True)
        kw["critic_body"] = tiny_model()
    return cls(cfg, tiny_model(), tiny_model().requires_grad_(False), **kw)


def test_a_collective_refuses_a_tensor_off_the_process_device():
    ctx = dist.DistContext(rank=0, local_rank=0, world_size=2, device=torch.device("cuda", 0))
    with pytest.raises(RuntimeError, match=r"on cpu was handed to a collective of a process on cuda:0"):
        dist.all_reduce_sum(torch.zeros(3, dtype=torch.float64), ctx)


@pytest.mark.parametrize("cls", [GRPO, ReinforcePP, PPO])
def test_the_update_hands_collectives_only_tensors_on_the_process_device(cls, monkeypatch):
    # One process playing rank 0 of two: the all-reduce is a fake that checks the device and adds an identical
    # second process. Inside, every tensor created without naming its device lands on "meta" (as one on the CPU
    # would in a run on a GPU), so a count or statistic built on the wrong device reaches a collective (or the
    # host) and fails, while what names the process's device (the model, the batches) runs on the CPU.
    reduced = []

    def all_reduce(t, *args, **kwargs):
        assert t.device == torch.device("cpu"), f"a collective got a tensor on {t.device}"
        reduced.append(t.shape)
        t.mul_(2)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.distributed, "all_gather_object", lambda out, obj, *a, **k: out.__setitem__(
        slice(None), [obj] * len(out)))
    ctx = dist.DistContext(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    alg = algorithm(cls, ctx, micro_batch_size=2)
    roll = tiny_rollout()
    roll.n_global = 2 * len(roll)  # the second process holds as many samples again
    plan = alg.plan(roll, torch.Generator().manual_seed(0))
    with torch.device("meta"):
        alg.advantages(roll, plan)
        stats = alg.update(roll, plan)
    assert reduced  # the counts, the gradients and the statistics went through the (fake) all-reduce
    assert all(isinstance(v, float) for v in stats.values())


def test_a_checkpoint_resumes_on_another_device(tmp_path, monkeypatch):
    # Written on the CPU, resumed on "meta" standing in for a GPU: the weights and optimizer state go to the
    # device, the RNG states stay CPU ByteTensors (torch.set_rng_state and Generator.set_state take no other).
    model = tiny_model()
    opt = make_optimizer(model, 1e-3, 0.0, (0.9, 0.95))
    model(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]])).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(3)
    path = save_checkpoint(tmp_path / "ckpt", model, {"step": 1, **trainer_state(opt.state_dict()),
                                                      "shuffle_gen": gen.get_state()})
    load = OLMo.load.__func__
    monkeypatch.setattr(OLMo, "load", classmethod(lambda cls, d, device="cpu": load(cls, d).to(device)))
    with torch.device("meta"):
        on_device = tiny_model()
    state = load_checkpoint(path, on_device, device="meta")
    assert state["rng"]["torch"].device.type == "cpu" and state["rng"]["torch"].dtype == torch.uint8
    before = torch.get_rng_state()
    set_rng_state(state["rng"])
    torch.set_rng_state(before)
    torch.Generator().set_state(state["shuffle_gen"])
    opt_on_device = make_optimizer(on_device, 1e-3, 0.0, (0.9, 0.95))
    opt_on_device.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    assert all(s["exp_avg"].device.type == "meta" for s in opt_on_device.state.values())


@pytest.mark.parametrize("cls", [GRPO, PPO])
def test_the_update_reads_the_device_once_whatever_the_micro_batches(cls, monkeypatch):
    # One mini-batch of 8 samples in 1 and in 8 micro-batches: the number of host reads must not grow.
    reads = {}
    for micro in (8, 1):
        alg = algorithm(cls, minibatch_size=8, micro_batch_size=micro)
        roll = tiny_rollout()
        plan = alg.plan(roll, torch.Generator().manual_seed(0))
        alg.advantages(roll, plan)
        with monkeypatch.context() as m:
            counted = count_host_reads(m)
            alg.update(roll, plan)
        reads[micro] = len(counted)
    assert reads[1] == reads[8], reads


def test_host_counted_targets_equal_the_batch_mask_with_interpreter_output():
    from echochamber.rl.pg import target_tokens

    roll = tiny_rollout()
    roll.written = [[j % 3 != 1 for j in range(len(r))] for r in roll.response_tokens]
    batch = ro.make_batch(roll, list(range(len(roll))), 0)
    assert target_tokens(roll, list(range(len(roll)))) == int(batch.mask.sum())
