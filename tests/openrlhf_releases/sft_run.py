"""One OpenRLHF SFT run on CPU through the real entry point (``openrlhf.cli.train_sft``),
run as a plain script so that gradfix is active only through GRADFIX=1.

It builds a tiny causal LM (weights from a fixed generator, so every transformers
release gets the same numbers), a character tokenizer and an SFT dataset with very
uneven response lengths in ``--workdir``, runs the CLI, and prints one ``RESULT``
line (JSON) on rank 0:

* ``grad_norms``: DeepSpeed's global gradient norm at every optimizer step;
* ``loss_means``: the training loss OpenRLHF logs for every optimizer step;
* ``weights``: a digest of the final weights, and their distance from the start;
* ``reference`` (with ``--reference``): the plain PyTorch global token mean over
  each optimizer window (all micro-batches of all ranks, epoch-spanning windows
  included), its gradient norm at the initial weights, from the batches the
  trainer's own dataloader yields. Comparable with ``grad_norms`` at the default
  learning rate, which leaves the weights unchanged;
* ``seconds_per_step``: wall time per optimizer step after the first;
* ``gradfix``: the patch records, or None when gradfix was not imported.

Only observation is added to OpenRLHF: the trainer and DeepSpeed's step are
wrapped to read values, and the three CUDA-only calls OpenRLHF makes on its CPU
path are neutralised (BUGS.md, "Running OpenRLHF SFT on CPU").
"""

import argparse
import hashlib
import json
import os
import random
import runpy
import socket
import sys
import time

import torch

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,"
SPECIALS = ["<pad>", "<eos>", "<bos>"]


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="train batch size (all ranks)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-30, help="the default leaves the weights unchanged")
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--adam-offload", action="store_true")
    parser.add_argument("--reference", action="store_true")
    return parser.parse_args()


def neutralise_cuda_calls():
    torch.cuda.set_device = lambda *args, **kwargs: None
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None


def distributed_environment():
    """A single process gets the variables torchrun would set. LOCAL_SIZE 0 keeps
    DeepSpeed's CPU shared-memory all-reduce off (its /dev/shm segments outlive
    processes); reductions go through gloo."""
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1"}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    os.environ["LOCAL_SIZE"] = "0"
    if "MASTER_PORT" not in os.environ:  # any port nobody listens on
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


def openrlhf_version():
    from importlib.metadata import version

    return tuple(int(part) for part in version("openrlhf").split(".")[:3])


def response_lengths(samples):
    """Very uneven: short and long responses alternate."""
    lengths = [3, 180, 9, 420, 5, 90, 240, 14, 2, 300, 40, 7, 600, 11, 60, 150]
    return [lengths[i % len(lengths)] for i in range(samples)]


def write_inputs(workdir, samples):
    """Model, tokenizer and dataset, written once per process (identical every time)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    model_dir = os.path.join(workdir, "model")
    vocab = {token: i for i, token in enumerate(SPECIALS + list(ALPHABET))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>")
    tokenizer.save_pretrained(model_dir)

    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:  # bf16-representable, so the bf16 run and the fp32 reference start equal
                param.copy_((torch.randn(param.shape, generator=generator) * 0.1).bfloat16().float())
    model.save_pretrained(model_dir)

    rng = random.Random(0)
    path = os.path.join(workdir, "sft.jsonl")
    with open(path, "w") as handle:
        for length in response_lengths(samples):
            prompt = "".join(rng.choice(ALPHABET) for _ in range(8))
            response = "".join(rng.choice(ALPHABET) for _ in range(length))
            handle.write(json.dumps({"input": prompt, "output": response}) + "\n")
    return model_dir, path


def cli_arguments(args, model_dir, dataset, save_dir):
    version = openrlhf_version()
    batch = ["--micro_train_batch_size", args.micro_batch, "--train_batch_size", args.batch]
    if version >= (0, 10, 2):  # dotted flags
        flags = ["--model.model_name_or_path", model_dir, "--data.dataset", dataset, "--data.input_key", "input",
                 "--data.output_key", "output", "--data.max_len", 1024, "--train.micro_batch_size", args.micro_batch,
                 "--train.batch_size", args.batch, "--train.max_epochs", args.epochs, "--adam.lr", args.lr,
                 "--lr_warmup_ratio", 0, "--ds.zero_stage", args.zero, "--ckpt.output_dir", save_dir,
                 "--train.seed", 42, "--ds.param_dtype", "bf16", "--ds.attn_implementation", "eager"]
        flags += ["--ds.adam_offload"] if args.adam_offload else []
        return [str(flag) for flag in flags]
    flags = ["--pretrain", model_dir, "--dataset", dataset, "--input_key", "input", "--output_key", "output",
             "--max_len", 1024, *batch, "--max_epochs", args.epochs, "--learning_rate", args.lr,
             "--lr_warmup_ratio", 0, "--zero_stage", args.zero, "--save_path", save_dir, "--seed", 42]
    flags += ["--param_dtype", "bf16"] if version >= (0, 9, 0) else ["--bf16"]
    flags += ["--attn_implementation", "eager"] if version >= (0, 8, 0) else []
    flags += ["--adam_offload"] if args.adam_offload else []
    return [str(flag) for flag in flags]


def observe_optimizer_steps(grad_norms, step_times=None):
    """Append DeepSpeed's global gradient norm (and, given ``step_times``, the
    perf_counter) at every optimizer step, by wrapping ``DeepSpeedEngine.step``."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    original_step = DeepSpeedEngine.step

    def step(engine, *a, **k):
        before = engine.global_steps
        result = original_step(engine, *a, **k)
        if engine.global_steps != before:
            if step_times is not None:
                step_times.append(time.perf_counter())
            norm = engine.get_global_grad_norm()
            grad_norms.append(float(norm) if norm is not None else None)
        return result

    DeepSpeedEngine.step = step


class Observer:
    """Reads values out of the run; changes nothing."""

    def __init__(self):
        self.grad_norms, self.loss_means, self.trainer = [], [], None
        self.step_times = []  # perf_counter at every optimizer step (for the benchmark)

    def install(self):
        from openrlhf.trainer import sft_trainer

        observer = self
        observe_optimizer_steps(self.grad_norms, self.step_times)
        # save_logs_and_checkpoints, not fit: gradfix wraps fit, and the observer stays
        # out of its way. It runs on every rank at every optimizer step.
        trainer_class = sft_trainer.SFTTrainer
        original_logs = trainer_class.save_logs_and_checkpoints

        def save_logs(trainer, args, global_step, step_bar, logs_dict=None, *a, **k):
            observer.trainer = trainer
            if logs_dict and "loss_mean" in logs_dict:
                observer.loss_means.append(float(logs_dict["loss_mean"]))
            return original_logs(trainer, args, global_step, step_bar, logs_dict, *a, **k)

        trainer_class.save_logs_and_checkpoints = save_logs


def weights_summary(model, model_dir):
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).state_dict()
    digest, moved = hashlib.sha256(), 0.0
    for name, param in sorted(model.named_parameters()):
        tensor = param.detach().float().cpu()
        digest.update(tensor.numpy().tobytes())
        moved += float((tensor - start[name]).pow(2).sum())
    return {"digest": digest.hexdigest()[:16], "distance": moved ** 0.5}


def trained_batches(trainer, epochs):
    """The micro-batches the trainer's dataloader yields, epoch by epoch (after
    training, so reading them cannot change the run)."""
    loader, batches = trainer.train_dataloader, []
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            try:
                loader.sampler.set_epoch(epoch, consumed_samples=0)
            except TypeError:
                loader.sampler.set_epoch(epoch)
        batches += [(inputs.squeeze(1), masks.squeeze(1), loss_masks.squeeze(1))
                    for inputs, masks, loss_masks in loader]
    return batches


def reference(model_dir, per_rank_batches, accumulation):
    """Global token mean of -log p over each optimizer window and its gradient norm,
    in fp32 at the initial weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    windows = min(len(batches) for batches in per_rank_batches) // accumulation
    losses, norms = [], []
    for window in range(windows):
        model.zero_grad()
        picked = [b for batches in per_rank_batches for b in batches[window * accumulation:(window + 1) * accumulation]]
        total_tokens = sum(float(loss_mask[:, :-1].sum()) for _, _, loss_mask in picked)
        loss_sum = 0.0
        for inputs, attention_mask, loss_mask in picked:
            logits = model(inputs, attention_mask=attention_mask).logits[:, :-1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, inputs[:, 1:].unsqueeze(-1)).squeeze(-1)
            loss = (-logp * loss_mask[:, :-1]).sum() / total_tokens
            loss.backward()
            loss_sum += float(loss)
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
        losses.append(loss_sum)
        norms.append(float(norm))
    return {"grad_norms": norms, "losses": losses}


def gradfix_records():
    gradfix = sys.modules.get("gradfix")
    if gradfix is None:
        return None
    return {s.id: {"state": s.state, "hits": s.hits, "evidence": s.evidence, "reason": s.reason}
            for s in gradfix.status()}


def main():
    args = parse_args()
    neutralise_cuda_calls()
    distributed_environment()
    rank = int(os.environ.get("RANK", "0"))
    workdir = os.path.join(args.workdir, f"rank{rank}")
    os.makedirs(workdir, exist_ok=True)
    model_dir, dataset = write_inputs(workdir, args.samples)

    observer = Observer()
    observer.install()
    sys.argv = ["train_sft", *cli_arguments(args, model_dir, dataset, os.path.join(workdir, "out"))]
    runpy.run_module("openrlhf.cli.train_sft", run_name="__main__")

    import torch.distributed as dist

    trainer = observer.trainer
    times = observer.step_times
    result = {"grad_norms": observer.grad_norms, "loss_means": observer.loss_means,
              "seconds_per_step": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None,
              "weights": weights_summary(trainer.model.model.module, model_dir), "gradfix": gradfix_records()}
    if args.reference:
        batches = trained_batches(trainer, args.epochs)
        everyone = [batches]
        if dist.is_initialized() and dist.get_world_size() > 1:
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, batches)
        result["reference"] = reference(model_dir, everyone, trainer.strategy.accumulated_gradient)
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
