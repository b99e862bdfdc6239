"""One OpenRLHF PPO actor or critic training phase on CPU with the real trainer code,
run as a plain script so that gradfix is active only through GRADFIX=1.

What Ray would do is done here in one process per rank (torchrun starts the ranks):
the arguments come from OpenRLHF's own CLI (``openrlhf.cli.train_ppo_ray``, stopped
where it builds the strategy, before any Ray call), and the release's own policy or
critic actor class (the class under its ``@ray.remote``) builds the DeepSpeed model,
its optimizer and its ``ActorPPOTrainer``/``CriticPPOTrainer`` with
``init_model_from_pretrained``. The replay buffer is filled with experiences of very
uneven response lengths, the old log-probs and old values being the model's own (so
the PPO ratio is 1 and the value clip is inactive), and the trainer's real
``ppo_train`` runs. One ``RESULT`` line (JSON) on rank 0:

* ``grad_norms``: DeepSpeed's global gradient norm at every optimizer step;
* ``seconds_per_step``: the wall time of ``ppo_train`` over its optimizer steps;
* ``reference`` (with ``--reference``): the plain PyTorch loss of 0.10.4+, one token
  mean over each optimizer window (all micro-batches of all ranks, windows
  restarting every epoch as OpenRLHF's do) of ``-A * ratio`` (actor) or
  ``(V - R)^2 / 2`` (critic), and its gradient norm at the initial weights, in fp32,
  from the experiences the trainer's dataloader yields;
* ``gradfix``: the patch records, or None when gradfix was not imported.
"""

import argparse
import copy
import dataclasses
import json
import os
import runpy
import sys
import time

import torch

from sft_run import (distributed_environment, gradfix_records, neutralise_cuda_calls, observe_optimizer_steps,
                     openrlhf_version, write_inputs)


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--samples", type=int, default=8, help="experiences per rank")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="train batch size (all ranks)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--policy-loss", default="ppo", help="ppo or gspo (a sequence-level loss)")
    parser.add_argument("--role", choices=["actor", "critic"], default="actor")
    parser.add_argument("--dynamic-batch", type=int, default=0, metavar="TOKENS",
                        help="dynamic batching with this many tokens per micro-batch (0: off)")
    parser.add_argument("--adam-offload", action="store_true", help="DeepSpeed optimizer offload to the CPU")
    parser.add_argument("--reference", action="store_true")
    return parser.parse_args()


def cli_arguments(args, model_dir, save_dir, world):
    """The CLI flags of a PPO run with a remote reward (no reward model); GAE, with a
    critic of the same model, for ``--role critic``."""
    critic = args.role == "critic"
    # Dynamic batching cuts the rollout into rollout_batch_size / train_batch_size steps: all of it.
    rollout = args.samples * world if args.dynamic_batch else args.batch
    if openrlhf_version() >= (0, 10, 2):  # dotted flags
        flags = ["--actor.model_name_or_path", model_dir, "--reward.remote_url", "http://127.0.0.1:1",
                 "--algo.advantage.estimator", "gae" if critic else "reinforce", "--algo.kl.init_coef", 0,
                 "--critic.adam.lr", 1e-30, "--critic.num_gpus_per_node", world,
                 "--train.micro_batch_size", args.micro_batch, "--train.batch_size", args.batch,
                 "--rollout.micro_batch_size", args.micro_batch, "--rollout.batch_size", rollout,
                 "--train.max_epochs", args.epochs, "--actor.adam.lr", 1e-30, "--ds.zero_stage", args.zero,
                 "--ds.param_dtype", "bf16", "--ds.attn_implementation", "eager", "--ckpt.output_dir", save_dir,
                 "--actor.num_gpus_per_node", world, "--train.seed", 42,
                 "--actor.policy_loss_type", args.policy_loss]
        flags += ["--ds.adam_offload"] if args.adam_offload else []
        return [str(flag) for flag in flags]
    flags = ["--pretrain", model_dir, "--remote_rm_url", "http://127.0.0.1:1",
             "--advantage_estimator", "gae" if critic else "reinforce", "--init_kl_coef", 0,
             "--critic_learning_rate", 1e-30, "--critic_num_gpus_per_node", world,
             "--micro_train_batch_size", args.micro_batch, "--train_batch_size", args.batch,
             "--micro_rollout_batch_size", args.micro_batch, "--rollout_batch_size", rollout,
             "--max_epochs", args.epochs, "--actor_learning_rate", 1e-30, "--zero_stage", args.zero,
             "--save_path", save_dir, "--actor_num_gpus_per_node", world, "--seed", 42, "--vllm_num_engines", 0]
    flags += ["--policy_loss_type", args.policy_loss] if args.policy_loss != "ppo" else []
    flags += ["--adam_offload"] if args.adam_offload else []
    flags += ["--param_dtype", "bf16"] if openrlhf_version() >= (0, 9, 0) else ["--bf16"]
    flags += ["--attn_implementation", "eager"] if openrlhf_version() >= (0, 8, 0) else []
    return [str(flag) for flag in flags]


class _Strategy(Exception):
    def __init__(self, strategy):
        super().__init__("strategy captured")
        self.strategy = strategy


def strategy_from_cli(argv):
    """Run the release's PPO CLI up to ``get_strategy(args)`` and return that strategy."""
    import ray

    import openrlhf.utils

    real = openrlhf.utils.get_strategy

    def capture(args):
        raise _Strategy(real(args))

    ray.is_initialized = lambda: True  # so that train() does not start Ray
    openrlhf.utils.get_strategy = capture
    sys.argv = ["train_ppo_ray", *argv]
    try:
        runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__")
    except _Strategy as captured:
        return captured.strategy
    finally:
        openrlhf.utils.get_strategy = real
    raise RuntimeError("the PPO CLI never built its strategy")


def enable_dynamic_batching(strategy, max_tokens):
    """What the CLI's dynamic batching flag sets, without the packed samples it then
    forces (those need flash-attn's varlen kernels and vLLM): micro-batches of at
    most ``max_tokens`` tokens balanced within each optimizer step, DeepSpeed at GA 1."""
    args, train = strategy.args, getattr(strategy.args, "train", None)
    if train is not None and hasattr(train, "dynamic_batch_enable"):  # 0.10.2+
        train.dynamic_batch_enable, train.max_tokens_per_gpu = True, max_tokens
    else:
        args.use_dynamic_batch, args.train_max_tokens_per_gpu = True, max_tokens
    strategy.use_dynamic_batch = True


def ppo_trainer(role, strategy, model_dir, max_steps):
    """The release's own policy or critic actor (the class under @ray.remote),
    initialised as Ray would, and its PPO trainer."""
    from openrlhf.trainer.ray import ppo_actor, ppo_critic

    if role == "actor":
        remote = getattr(ppo_actor, "PolicyModelActor", None) or ppo_actor.ActorModelRayActor
        arguments = (strategy, model_dir, max_steps, None)
    else:
        remote = getattr(ppo_critic, "CriticModelActor", None) or ppo_critic.CriticModelRayActor
        arguments = (strategy, model_dir, max_steps)
    actor_class = remote.__ray_metadata__.modified_class
    instance = actor_class.__new__(actor_class)  # Ray's __init__ only sets the rendezvous variables torchrun set
    buffer_class = ppo_actor.NaiveReplayBuffer
    original_init = buffer_class.__init__

    def buffer_init(buffer, *args, **kwargs):  # it names its device "cuda:{current_device()}"
        torch.cuda.current_device = lambda: 0
        try:
            original_init(buffer, *args, **kwargs)
        finally:
            torch.cuda.current_device = lambda: "cpu"
        buffer.target_device = torch.device("cpu")

    buffer_class.__init__ = buffer_init
    instance.init_model_from_pretrained(*arguments)
    return instance.trainer


def experience_class():
    try:
        from openrlhf.trainer.ppo_utils.experience import Experience
    except ImportError:  # 0.7.x-0.8.x
        from openrlhf.trainer.ppo_utils.experience_maker import Experience
    return Experience


def response_lengths(samples, rank):
    lengths = [3, 180, 9, 420, 5, 90, 240, 14, 2, 300, 40, 7, 600, 11, 60, 150]
    return [lengths[(i + 5 * rank) % len(lengths)] for i in range(samples)]


def experiences(trainer, role, samples, rank):
    """One experience per sample (the buffer's own split and collate make the
    micro-batches): a prompt of 8 tokens, a response of very uneven length, right
    padding to the longest, fixed random advantages and returns, old log-probs or
    old values = the model's."""
    generator = torch.Generator().manual_seed(1000 + rank)
    lengths = response_lengths(samples, rank)
    prompt, width = 8, max(lengths)
    sequences = torch.full((samples, prompt + width), 0, dtype=torch.long)
    attention = torch.zeros_like(sequences)
    action_mask = torch.zeros((samples, width), dtype=torch.bool)
    for i, length in enumerate(lengths):
        tokens = torch.randint(3, 32, (prompt + length,), generator=generator)
        sequences[i, :prompt] = tokens[:prompt]
        sequences[i, prompt:prompt + length] = tokens[prompt:]
        attention[i, :prompt + length] = 1
        action_mask[i, :length] = True
    advantages = torch.randn((samples, width), generator=generator) * action_mask
    returns = torch.randn((samples, width), generator=generator) * action_mask
    with torch.no_grad():
        if role == "actor":
            old_log_probs, old_values = trainer.actor(sequences, action_mask, attention_mask=attention).float(), None
        else:
            old_values = trainer.critic(sequences, action_mask=action_mask, attention_mask=attention).float()
            old_log_probs = torch.zeros_like(advantages)
    fields = dict(sequences=sequences, attention_mask=attention, action_mask=action_mask,
                  action_log_probs=old_log_probs, base_action_log_probs=old_log_probs,
                  values=old_values if old_values is not None else torch.zeros_like(advantages),
                  returns=returns, advantages=advantages,
                  info={"response_length": torch.tensor(lengths, dtype=torch.float),
                        "total_length": torch.tensor([prompt + n for n in lengths], dtype=torch.float),
                        "reward": torch.zeros(samples), "return": torch.zeros(samples), "kl": torch.zeros(samples)})
    Experience = experience_class()
    names = {f.name for f in dataclasses.fields(Experience)}
    if "response_length" in names:
        fields.update(response_length=fields["info"]["response_length"], total_length=fields["info"]["total_length"],
                      rewards=torch.zeros(samples))
    return Experience(**{name: value for name, value in fields.items() if name in names})


class Observer:
    """DeepSpeed's grad norm at every optimizer step, and the experiences trained on."""

    def __init__(self):
        self.grad_norms, self.trained = [], []

    def install(self):
        observer = self
        observe_optimizer_steps(self.grad_norms)
        experience_type = experience_class()
        original_move = experience_type.to_device

        def to_device(experience, device, *a, **k):
            result = original_move(experience, device, *a, **k)
            observer.trained.append((experience.sequences.clone(), experience.attention_mask.clone(),
                                     experience.action_mask.clone(), experience.advantages.clone(),
                                     experience.returns.clone()))
            return result

        experience_type.to_device = to_device


def policy_loss_sum(model):
    """sum of -A * ratio over a micro-batch's response tokens (ratio 1, its gradient
    that of log p), computed from the plain Hugging Face model."""

    def loss_sum(sequences, attention, action_mask, advantages, returns):
        logits = model(sequences, attention_mask=attention).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, sequences[:, 1:].unsqueeze(-1)).squeeze(-1)
        logp = logp[:, -action_mask.shape[1]:]
        return (-advantages * torch.exp(logp - logp.detach()) * action_mask).sum()

    return loss_sum


def value_loss_sum(critic):
    """sum of (V - R)^2 / 2 over a micro-batch's response tokens, V from an fp32 copy
    of the release's own critic module (its value head included)."""

    def loss_sum(sequences, attention, action_mask, advantages, returns):
        values = critic(sequences, action_mask=action_mask, attention_mask=attention).float()
        return 0.5 * ((values - returns) ** 2 * action_mask).sum()

    return loss_sum


def windows(trainer, accumulation, per_epoch, epochs):
    """(first, end) micro-batch positions of every optimizer window in what each rank
    trained: GA micro-batches, restarting every epoch as OpenRLHF 0.10.4+ does, or
    the replay buffer's steps under dynamic batching (the same on every rank)."""
    buffer = trainer.replay_buffer
    if getattr(buffer, "dynamic_batch", False):
        ends = [i + 1 for i, last in enumerate(buffer.dynamic_optimizer_step) if last]
    else:
        ends = [min(start + accumulation, per_epoch) for start in range(0, per_epoch, accumulation)]
    starts = [0, *ends[:-1]]
    return [(epoch * per_epoch + first, epoch * per_epoch + end)
            for epoch in range(epochs) for first, end in zip(starts, ends)]


def reference(model, loss_sum, per_rank_trained, bounds):
    """The window token mean of the loss and its gradient norm, in fp32 at the initial
    weights, for every window of ``bounds``."""
    norms = []
    for first, end in bounds:
        model.zero_grad()
        picked = [batch for trained in per_rank_trained for batch in trained[first:end]]
        tokens = sum(float(batch[2].sum()) for batch in picked)
        for batch in picked:
            (loss_sum(*batch) / tokens).backward()
        norms.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))))
    return {"grad_norms": norms}


def main():
    args = parse_args()
    neutralise_cuda_calls()
    torch.cuda.empty_cache = lambda: None
    distributed_environment()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    workdir = os.path.join(args.workdir, f"rank{rank}")
    os.makedirs(workdir, exist_ok=True)
    model_dir, _ = write_inputs(workdir, 1)

    strategy = strategy_from_cli(cli_arguments(args, model_dir, os.path.join(workdir, "out"), world))
    if args.dynamic_batch:
        enable_dynamic_batching(strategy, args.dynamic_batch)
    trainer = ppo_trainer(args.role, strategy, model_dir, max_steps=1000)
    trainer.replay_buffer.append(experiences(trainer, args.role, args.samples, rank))
    if args.role == "critic":  # an fp32 copy of the critic as it starts, for the reference
        start = copy.deepcopy(trainer.critic.module).float()
    observer = Observer()
    observer.install()
    started = time.perf_counter()
    trainer.ppo_train(0.0) if args.role == "actor" else trainer.ppo_train()
    seconds = time.perf_counter() - started

    import torch.distributed as dist

    result = {"grad_norms": observer.grad_norms, "gradfix": gradfix_records(), "micro_batches": len(observer.trained),
              "seconds_per_step": seconds / max(len(observer.grad_norms), 1)}
    if args.reference:
        everyone = [observer.trained]
        if dist.is_initialized() and dist.get_world_size() > 1:
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, observer.trained)
        if args.role == "actor":
            from transformers import AutoModelForCausalLM

            start = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                         attn_implementation="eager")
            loss_sum = policy_loss_sum(start)
        else:
            loss_sum = value_loss_sum(start)
        per_epoch = len(observer.trained) // args.epochs
        bounds = windows(trainer, strategy.accumulated_gradient, per_epoch, args.epochs)
        result["reference"] = reference(start, loss_sum, everyone, bounds)
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
