"""TRL's SFTTrainer end to end (run under ``accelerate launch`` with a DeepSpeed config
file): the tiny Llama and the four uneven sequences of trainer_worker.py, already
tokenized (prompt tokens masked in the labels), one optimizer step of SGD. Rank 0
writes the applied update against the plain PyTorch token mean of the step, and
this process's gradfix report.

    accelerate launch --use_deepspeed --deepspeed_config_file ds.json --num_processes 1 trl_worker.py OUT
"""

import json
import sys
import tempfile

import torch
from trainer_worker import LEARNING_RATE, VOCABULARY, reference_update, sequences, shut_down, tiny_model


def tokenizer():
    """A word-level tokenizer over the ids 0..VOCABULARY-1, built in memory (no download)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocabulary = {f"t{i}": i for i in range(VOCABULARY)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocabulary, unk_token="t0")),
                                   pad_token="t0", eos_token="t1")


def innermost(optimizer):
    """The optimizer that updates the weights, under accelerate's and DeepSpeed's wrappers."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return type(optimizer).__name__


def main(out, accumulation=4):
    import deepspeed
    import trl
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, rows = tiny_model(), sequences()
    before = [p.detach().clone() for p in model.parameters()]
    reference = reference_update(model, rows)
    dataset = Dataset.from_list([{"input_ids": r["input_ids"].tolist(), "labels": r["labels"].tolist()} for r in rows])
    with tempfile.TemporaryDirectory() as output_dir:
        config = SFTConfig(output_dir=output_dir, per_device_train_batch_size=1,
                           gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=LEARNING_RATE,
                           optim="sgd", lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0,
                           weight_decay=0.0, report_to=[], save_strategy="no", logging_steps=1, seed=0,
                           bf16=False, fp16=False, use_cpu=True, dataset_kwargs={"skip_prepare_dataset": True})
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer())
        trainer.train()
    applied = [p.detach() - b for p, b in zip(trainer.model.parameters(), before)]
    squares = sum((r ** 2).sum() for r in reference)
    error = torch.sqrt(sum(((a - r) ** 2).sum() for a, r in zip(applied, reference)) / squares).item()
    if trainer.args.process_index == 0:
        import gradfix

        with open(out, "w") as stream:
            json.dump({
                "trl": trl.__version__, "deepspeed": deepspeed.__version__,
                "deepspeed_enabled": trainer.is_deepspeed_enabled,
                "optimizer": innermost(trainer.optimizer),
                "update_error": error,
                "gradfix": {s.id: {"state": str(s.state), "hits": s.hits} for s in gradfix.status()},
            }, stream, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    shut_down()
