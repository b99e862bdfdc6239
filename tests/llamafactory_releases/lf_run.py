"""One LLaMA-Factory SFT run through its real CLI, checked against a plain PyTorch
reference on the same samples.

    python lf_run.py WORKDIR [--ranks N] [--ga N] [--deepspeed] [--processor] [--loss dft]

Builds, under WORKDIR, a tiny Qwen2 causal LM and its tokenizer (saved with
``save_pretrained``; with ``--processor`` the folder also holds a LLaVA processor,
so LLaMA-Factory takes its multimodal (processor) path), an alpaca-format dataset with
very uneven answer lengths, and the YAML. Then runs ``llamafactory-cli train`` with
FORCE_TORCHRUN=1 (``--deepspeed``: a ZeRO-2 config with CPU optimizer offload, the
settings of LLaMA-Factory's examples/deepspeed/ds_z2_offload_config.json) for exactly
one optimizer step with plain SGD, and compares the saved weights with the reference.

The reference: the samples LLaMA-Factory tokenized (``tokenized_path``), the initial
weights, and one SGD step on the window's token mean, i.e. the cross-entropy summed over
every target token of every sample divided by their number. The run holds exactly one
window (GA x ranks samples, one per micro-batch), so the reference does not depend on
the order the sampler picks. Prints ``RESULT {json}`` with the relative update error.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>", "<image>"]
WORDS = ("red green blue cat dog fish one two three sun moon star tree river stone cloud "
         "fast slow big small warm cold light dark north south east west").split()
LEARNING_RATE = 1.0  # one SGD step: the update is the gradient itself


def answer_lengths(count):
    """Very uneven answers: short ones next to long ones in every window."""
    pattern = [1, 37, 4, 22, 2, 30, 9, 15]
    return [pattern[i % len(pattern)] for i in range(count)]


def sentence(length, seed):
    return " ".join(WORDS[(seed * 7 + 3 * k) % len(WORDS)] for k in range(length))


def build_model_folder(folder, processor):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [sentence(12, seed) for seed in range(64)] + ["system user assistant You are a helpful assistant."]
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = Qwen2TokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
    Qwen2ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    if processor:  # a LLaVA processor (image processor + this tokenizer): needs neither torchvision nor video
        from transformers import CLIPImageProcessor, LlavaProcessor

        LlavaProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer, patch_size=14,
                       image_token="<image>").save_pretrained(folder)


def write_data(folder, samples):
    rows = [{"instruction": sentence(3 + i % 5, i + 100), "input": "", "output": sentence(length, i)}
            for i, length in enumerate(answer_lengths(samples))]
    (folder / "tiny.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))


def deepspeed_config(folder):
    """LLaMA-Factory's examples/deepspeed/ds_z2_offload_config.json, plus
    zero_force_ds_cpu_optimizer=false so that the Trainer's SGD is kept (exact test)."""
    config = {
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True},
            "allgather_partitions": True, "allgather_bucket_size": 5e8, "overlap_comm": False,
            "reduce_scatter": True, "reduce_bucket_size": 5e8, "contiguous_gradients": True,
            "round_robin_gradients": True,
        },
    }
    path = folder / "ds_z2_offload_config.json"
    path.write_text(json.dumps(config))
    return path


def write_yaml(work, args):
    settings = {
        "model_name_or_path": str(work / "model"), "stage": "sft", "do_train": True, "finetuning_type": "full",
        "dataset": "tiny", "dataset_dir": str(work / "data"), "template": "qwen", "cutoff_len": 256,
        "overwrite_cache": True, "tokenized_path": str(work / "tokenized"),
        "output_dir": str(work / "out"), "overwrite_output_dir": True, "save_strategy": "no",
        "logging_steps": 1, "report_to": "none", "plot_loss": False,
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": args.ga, "num_train_epochs": 1,
        "learning_rate": LEARNING_RATE, "lr_scheduler_type": "constant", "optim": "sgd", "weight_decay": 0.0,
        "max_grad_norm": 0.0, "warmup_ratio": 0.0, "bf16": False, "fp16": False, "seed": 0,
        "dataloader_num_workers": 0, "preprocessing_num_workers": None,
    }
    if args.deepspeed:
        settings["deepspeed"] = str(deepspeed_config(work))
    if args.loss:
        settings[f"use_{args.loss}_loss"] = True
    lines = [f"{key}: {json.dumps(value)}" for key, value in settings.items() if value is not None]
    path = work / "train.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def train(work, yaml_path, ranks, port):
    bin_folder = str(Path(sys.executable).parent)
    env = dict(os.environ, FORCE_TORCHRUN="1", NPROC_PER_NODE=str(ranks), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), PATH=bin_folder + os.pathsep + os.environ.get("PATH", ""),
               DISABLE_VERSION_CHECK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", LOCAL_SIZE="0")
    proc = subprocess.run([str(Path(bin_folder) / "llamafactory-cli"), "train", str(yaml_path)], env=env,
                          capture_output=True, text=True, cwd=work, timeout=900)
    (work / "train.log").write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"llamafactory-cli train failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def load_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def reference_update(work):
    """-lr x the gradient of the window's token mean, per parameter name."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    samples = load_from_disk(str(work / "tokenized"))["train"]
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), torch_dtype=torch.float32)
    model.train()
    total = sum(sum(1 for label in row["labels"] if label != -100) for row in samples)
    loss_sum = 0.0
    for row in samples:
        input_ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor([row["labels"]])
        logits = model(input_ids=input_ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        (loss / total).backward()
        loss_sum += loss.item()
    update = {name: -LEARNING_RATE * p.grad for name, p in model.named_parameters() if p.grad is not None}
    return update, {"samples": len(samples), "target_tokens": total, "token_mean_loss": loss_sum / total,
                    "target_tokens_per_sample": [sum(1 for x in r["labels"] if x != -100) for r in samples]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--ga", type=int, default=4)
    parser.add_argument("--deepspeed", action="store_true")
    parser.add_argument("--processor", action="store_true")
    parser.add_argument("--loss", choices=["dft"], default=None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    work = args.workdir
    for sub in ("model", "data"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    build_model_folder(work / "model", args.processor)
    write_data(work / "data", samples=args.ga * args.ranks)
    output = train(work, write_yaml(work, args), args.ranks, args.port)

    import torch

    initial, final = load_weights(work / "model"), load_weights(work / "out")
    expected, facts = reference_update(work)
    applied = {name: final[name] - initial[name] for name in expected}
    difference = torch.sqrt(sum(((applied[n] - expected[n]) ** 2).sum() for n in expected))
    size = torch.sqrt(sum((expected[n] ** 2).sum() for n in expected))
    lines = output.splitlines()
    logged = [float(found) for found in re.findall(r"'loss': ([0-9.]+)", output)]  # Trainer's per-step log
    print("RESULT " + json.dumps({"update_error": float(difference / size), "logged_losses": logged,
                                  "evidence": [line for line in lines if line.startswith("gradfix [rank")],
                                  "notes": [line for line in lines if line.startswith("gradfix: lf-")],
                                  **facts}))


if __name__ == "__main__":
    main()
