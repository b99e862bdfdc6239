"""Trainer runs of the conformance matrix (a worker of ``torchrun``; run from its file,
so that a run without gradfix never imports it).

Each job trains a tiny Llama built from a config (no download) with the installed
``transformers.Trainer`` for one epoch of SGD on sequences of very different lengths,
and compares the weights it ends with against a plain PyTorch loop that makes the
same optimizer steps with the loss the first fixed transformers release computes:

* a model that takes loss keyword arguments, or a ``compute_loss_func`` summing token
  losses over ``num_items_in_batch``: the token mean over the optimizer step's window,
  over every rank's tokens (``average_tokens_across_devices``, the default from
  4.54.0) or over each rank's own tokens, then averaged over ranks (when set False);
* a model that takes none (its loss is its micro-batch's token mean): the mean of the
  window's micro-batch means, over the micro-batches the window really has.

    python -m torch.distributed.run --nproc_per_node 2 trainer_worker.py --jobs JOBS.json

JOBS.json is a list of jobs (gradfix.conformance.trainer_cases.job_of); rank 0 prints
``RESULTS <json>``, one result per job: the relative distance of the final weights
from the reference's (over the reference's update), the largest difference between
ranks' weights, and the hits of gradfix's patches in that job.
"""

import argparse
import copy
import json
import os
import sys
import tempfile

import torch

LEARNING_RATE = 0.5
PROMPT = 2  # masked prompt tokens at the start of every sequence
RESPONSES = (1, 24, 2, 40, 3, 17, 30, 9, 5, 36, 12, 7, 28, 4, 20, 11)  # target tokens per sequence
VOCABULARY = 64


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCABULARY, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).float()


class MeanLossModel(torch.nn.Module):
    """A model whose forward takes no loss keyword arguments: its loss is the mean over
    its own micro-batch's tokens, as a custom model's or an older architecture's is."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def sequences(count):
    generator = torch.Generator().manual_seed(1)
    rows = []
    for response in RESPONSES[:count]:
        ids = torch.randint(0, VOCABULARY, (PROMPT + response,), generator=generator)
        labels = ids.clone()
        labels[:PROMPT] = -100
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})
    return rows


def token_sum(logits, labels):
    """Summed cross-entropy of the predicted tokens (labels shifted by one)."""
    return torch.nn.functional.cross_entropy(logits[..., :-1, :].reshape(-1, logits.shape[-1]).float(),
                                             labels[..., 1:].reshape(-1), ignore_index=-100, reduction="sum")


def token_sum_loss(outputs, labels, num_items_in_batch=None):
    """A compute_loss_func: the summed token loss over the count Trainer passes, or, when
    it passes none, over the micro-batch's own count (as transformers' own losses do)."""
    if num_items_in_batch is None:
        num_items_in_batch = (labels[..., 1:] != -100).sum()
    return token_sum(outputs.logits, labels) / num_items_in_batch


def windows(micro_steps, ga):
    """The micro-step indices of each optimizer step in one epoch (the last may be short)."""
    return [list(range(start, min(start + ga, micro_steps))) for start in range(0, micro_steps, ga)]


def reference_params(model, rows, job, world):
    """The weights after the epoch in plain PyTorch: rank r trains on rows r, r + world,
    ... (Trainer's sequential sampler sharded by accelerate), one row per micro-step."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    per_rank = [rows[rank::world] for rank in range(world)]
    across_ranks = job["average_tokens"] in ("default", "true")  # the fixed releases' default: True
    for window in windows(len(per_rank[0]), job["ga"]):
        sums = [[token_sum(model(input_ids=per_rank[r][m]["input_ids"][None]).logits, per_rank[r][m]["labels"][None])
                 for m in window] for r in range(world)]
        counts = [[int((per_rank[r][m]["labels"][1:] != -100).sum()) for m in window] for r in range(world)]
        if job["model"] == "mean_loss":
            loss = sum(sum(s / c for s, c in zip(sums[r], counts[r])) / len(window) for r in range(world)) / world
        elif across_ranks or world == 1:
            loss = sum(sum(rank_sums) for rank_sums in sums) / sum(sum(rank_counts) for rank_counts in counts)
        else:
            loss = sum(sum(sums[r]) / sum(counts[r]) for r in range(world)) / world
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach() for p in model.parameters()]


def deepspeed_config(stage=2):
    """ZeRO (stage 2 unless the job says) in fp32 with the Trainer's own SGD (no
    DeepSpeedCPUAdam swap)."""
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": {"stage": stage},
            "zero_force_ds_cpu_optimizer": False, "bf16": {"enabled": False}, "fp16": {"enabled": False}}


def _sequential_trainer():
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class SequentialTrainer(Trainer):
        """Trainer as it is, but reading the data in order (its sampler is random), so that
        the reference knows which rows each rank trains on in each window."""

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    return SequentialTrainer


def _rank_divergence(model):
    import torch.distributed as dist

    mine = torch.cat([p.detach().flatten() for p in model.parameters()])
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return max((other - mine).abs().max().item() for other in every)


def _single_process_group():
    """What torchrun would set, for DeepSpeed in a single process (it would otherwise
    look for MPI to learn its rank)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(name, value)


def train(job):
    """One job; its result (the same on every rank but for the hits, which rank 0 reports)."""
    from transformers import TrainingArguments

    if job["deepspeed"] and "RANK" not in os.environ:
        _single_process_group()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rows = sequences(job["sequences"])
    inner = tiny_model()
    model = inner if job["model"] == "loss_kwargs" else MeanLossModel(inner)
    initial = [p.detach().clone() for p in model.parameters()]
    reference = reference_params(model, rows, job, world)
    chosen = {}
    if job["average_tokens"] != "default":
        chosen["average_tokens_across_devices"] = job["average_tokens"] == "true"
    if job["deepspeed"]:
        chosen["deepspeed"] = deepspeed_config(job.get("zero_stage", 2))
    extra = {"compute_loss_func": token_sum_loss} if job["model"] == "compute_loss_func" else {}
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=1,
                                 gradient_accumulation_steps=job["ga"], num_train_epochs=1,
                                 learning_rate=LEARNING_RATE, optim="sgd", lr_scheduler_type="constant",
                                 max_grad_norm=0.0, weight_decay=0.0, report_to=[], save_strategy="no",
                                 logging_steps=1, use_cpu=True, seed=0, remove_unused_columns=False,
                                 dataloader_drop_last=False, **chosen)
        trainer = _sequential_trainer()(model=model, args=args, train_dataset=rows, **extra)
        trainer.train()
    final = [p.detach() for p in model.parameters()]
    distance = torch.sqrt(sum(((f - r) ** 2).sum() for f, r in zip(final, reference))).item()
    update = torch.sqrt(sum(((r - i) ** 2).sum() for r, i in zip(reference, initial))).item()
    return {"update_error": distance / max(update, 1e-12),
            "rank_divergence": _rank_divergence(model) if world > 1 else 0.0,
            "optimizer_steps": trainer.state.global_step,
            "reference_steps": len(windows(len(rows) // world, job["ga"]))}


def _patch_hits():
    gradfix = sys.modules.get("gradfix")
    return {s.id: s.hits for s in gradfix.status()} if gradfix is not None else {}


def _forget_accelerator_state():
    """Let the next job's Trainer set accelerate's process-wide state up afresh, keeping
    the process group."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", required=True, help="a JSON list of jobs, trained one after the other")
    args = parser.parse_args(argv)
    with open(args.jobs) as handle:
        jobs = json.load(handle)
    results = []
    for number, job in enumerate(jobs):
        if number:
            _forget_accelerator_state()
        before = _patch_hits()
        try:
            result = train(job)
        except Exception as exc:  # one job's failure is its own result, not the batch's
            result = {"failed": f"{type(exc).__name__}: {exc}"[:400]}
        after = _patch_hits()
        result["patches"] = sorted(pid for pid, hits in after.items() if hits > before.get(pid, 0))
        import transformers

        result["transformers"] = transformers.__version__
        results.append(result)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULTS " + json.dumps(results), flush=True)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
