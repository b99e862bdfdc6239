"""One Trainer run (a worker of ``torchrun``): a tiny Llama built from a config, one
optimizer step of SGD over four sequences of very different lengths, then rank 0
writes the applied update next to a plain PyTorch reference (the global token mean
over the whole step) and this process's gradfix report.

    python -m torch.distributed.run --nproc_per_node 2 trainer_worker.py OUT \
        [--average-tokens true|false] [--custom-loss] [--accumulation N] [--zero-stage S [--offload]]
        [--axolotl]
    python -m torch.distributed.run --nproc_per_node 2 trainer_worker.py OUT --jobs JOBS.json

With --jobs, JOBS.json is a list of option lists: each is trained in turn in this
process (transformers is imported once; the import takes most of a run's time) and
OUT gets the list of their results, each with the patch hits and gradfix messages of
its own run.
"""

import argparse
import copy
import json
import logging
import os
import tempfile

import torch

LEARNING_RATE = 0.5
PROMPT = 2  # masked prompt tokens at the start of every sequence (the first label is never predicted)
RESPONSES = (1, 2, 24, 40)  # target tokens per sequence: no split over two ranks balances them
VOCABULARY = 64


def tiny_model(architecture="llama"):
    """A tiny causal LM built from a config. GPT-2's forward takes no loss keyword
    arguments before transformers 4.48 (Trainer then gets a micro-batch mean loss)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=VOCABULARY, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(config).float()
    config = LlamaConfig(vocab_size=VOCABULARY, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).float()


def sequences(count=len(RESPONSES)):
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


def reference_update(model, rows, per_sequence=False):
    """-lr * gradient of the global token mean over every sequence of the step (or,
    ``per_sequence``, of the mean of per-sequence token means: what Trainer computes
    for a model that takes no loss keyword arguments, one sequence per micro-batch)."""
    model = copy.deepcopy(model)
    counts = [int((row["labels"][1:] != -100).sum()) for row in rows]
    sums = [token_sum(model(input_ids=row["input_ids"][None]).logits, row["labels"][None]) for row in rows]
    if per_sequence:
        loss = sum(total / count for total, count in zip(sums, counts)) / len(rows)
    else:
        loss = sum(sums) / sum(counts)
    loss.backward()
    return [-LEARNING_RATE * p.grad for p in model.parameters()]


def deepspeed_config(stage, offload):
    """fp32, the Trainer's own SGD (no DeepSpeedCPUAdam swap), sizes from the Trainer."""
    zero = {"stage": stage}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": False, "bf16": {"enabled": False}, "fp16": {"enabled": False}}


def _rank_divergence(model):
    """The largest difference between this rank's weights and any other rank's."""
    import torch.distributed as dist

    mine = torch.cat([p.detach().flatten() for p in model.parameters()])
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return max((other - mine).abs().max().item() for other in every)


def custom_loss(outputs, labels, num_items_in_batch=None):
    return token_sum(outputs.logits, labels) / num_items_in_batch


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--average-tokens", choices=("true", "false"),
                        help="pass average_tokens_across_devices explicitly (default: leave it out)")
    parser.add_argument("--custom-loss", action="store_true",
                        help="a compute_loss_func and a model that takes no loss keyword arguments")
    parser.add_argument("--micro-batch-mean", action="store_true",
                        help="a model that takes no loss keyword arguments (its loss is a micro-batch mean)")
    parser.add_argument("--architecture", choices=("llama", "gpt2"), default="llama")
    parser.add_argument("--accumulation", type=int, default=2, help="gradient_accumulation_steps (x ranks = 4)")
    parser.add_argument("--sequences", type=int, default=len(RESPONSES),
                        help="train on the first N sequences (fewer than GA x ranks: a partial window)")
    parser.add_argument("--zero-stage", type=int, help="run through DeepSpeed with this ZeRO stage (fp32)")
    parser.add_argument("--offload", action="store_true", help="with --zero-stage: offload the optimizer to the CPU")
    parser.add_argument("--axolotl", action="store_true",
                        help="apply Axolotl's own Trainer patches first, as its model loader does for a Llama "
                             "trained with DeepSpeed and gradient accumulation")
    return parser.parse_args(argv)


def train(options):
    """One Trainer run; its result on rank 0 (None on the other ranks)."""
    import gradfix
    import transformers
    from transformers import Trainer, TrainingArguments

    if options.axolotl:
        from axolotl.monkeypatch import trainer_grad_accum

        trainer_grad_accum.patch_training_loop_for_deepspeed_0_16_x()
        trainer_grad_accum.patch_forward_for_ga()
        trainer_grad_accum.patch_training_step_for_ga()

    model, rows = tiny_model(options.architecture), sequences(options.sequences)
    before = [p.detach().clone() for p in model.parameters()]
    reference = reference_update(model, rows, per_sequence=options.micro_batch_mean)
    chosen = {}
    if options.average_tokens is not None:
        chosen["average_tokens_across_devices"] = options.average_tokens == "true"
    with tempfile.TemporaryDirectory() as output_dir:
        if options.zero_stage is not None:
            chosen["deepspeed"] = deepspeed_config(options.zero_stage, options.offload)
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=1,
                                 gradient_accumulation_steps=options.accumulation, max_steps=1,
                                 learning_rate=LEARNING_RATE, optim="sgd", lr_scheduler_type="constant",
                                 max_grad_norm=0.0, weight_decay=0.0, report_to=[], save_strategy="no",
                                 logging_steps=1, use_cpu=True, seed=0, remove_unused_columns=False, **chosen)
        extra = {}
        if options.custom_loss or options.micro_batch_mean:
            model.accepts_loss_kwargs = False  # read by Trainer from 4.48.0
        if options.custom_loss:
            extra["compute_loss_func"] = custom_loss
        trainer = Trainer(model=model, args=args, train_dataset=rows, **extra)
        trainer.train()
    applied = [p.detach() - b for p, b in zip(model.parameters(), before)]
    error = torch.sqrt(sum(((a - r) ** 2).sum() for a, r in zip(applied, reference))
                       / sum((r ** 2).sum() for r in reference)).item()
    # The applied update as a multiple of the reference (1 when only the scale is right).
    scale = (sum((a * r).sum() for a, r in zip(applied, reference)) / sum((r ** 2).sum() for r in reference)).item()
    divergence = _rank_divergence(model) if trainer.args.world_size > 1 else 0.0
    if trainer.args.process_index != 0:
        return None
    return {
        "transformers": transformers.__version__,
        "ranks": trainer.args.world_size,
        "model_accepts_loss_kwargs": trainer.model_accepts_loss_kwargs,
        "average_tokens_across_devices": trainer.args.average_tokens_across_devices,
        "update_error": error,
        "update_scale": scale,
        "rank_divergence": divergence,
        "training_loop_from": Trainer._inner_training_loop.__module__,
        "gradfix_active": gradfix.is_active(),
        "gradfix": {s.id: {"state": str(s.state), "hits": s.hits, "reason": s.reason} for s in gradfix.status()},
    }


def forget_accelerator_state():
    """Let the next job's Trainer set accelerate's process-wide state up afresh (its
    own accumulation and DeepSpeed plugin), keeping the process group."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


class JobLog(logging.Handler):
    """gradfix's messages during one job, and each patch's hits before it. gradfix says
    some notes once per process; each job is told them afresh, as a process of its own
    would be."""

    def __enter__(self):
        import gradfix
        from gradfix import report

        report._said_once.clear()
        self.lines = []
        self.hits_before = {s.id: s.hits for s in gradfix.status()}
        logging.getLogger("gradfix").addHandler(self)
        return self

    def result(self, outcome):
        """The job's result with its own hit counts and messages (None on ranks but 0)."""
        if outcome is None:
            return None
        hits = {pid: {**record, "hits": record["hits"] - self.hits_before.get(pid, 0)}
                for pid, record in outcome["gradfix"].items()}
        return {**outcome, "gradfix": hits, "log": "\n".join(self.lines)}

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __exit__(self, *exc):
        logging.getLogger("gradfix").removeHandler(self)


def serve(train_one, parse_one):
    """A worker's command line: ``OUT [options]`` trains once, ``OUT --jobs JOBS.json``
    trains each option list of JOBS.json in turn; rank 0 writes the result(s) to OUT."""
    arguments = argparse.ArgumentParser()
    arguments.add_argument("out")
    arguments.add_argument("--jobs", help="a JSON list of option lists, trained one after the other")
    known, rest = arguments.parse_known_args()
    if known.jobs is None:
        result = train_one(parse_one(rest))
    else:
        with open(known.jobs) as stream:
            jobs = json.load(stream)
        result = []
        for number, job in enumerate(jobs):
            if number:
                forget_accelerator_state()
            with JobLog() as log:
                result.append(log.result(train_one(parse_one(job))))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(known.out, "w") as stream:
            json.dump(result, stream, indent=1)


def shut_down():
    """Leave the process group before exiting: a gloo group still alive at exit can
    abort the process ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    serve(train, parse)
    shut_down()
