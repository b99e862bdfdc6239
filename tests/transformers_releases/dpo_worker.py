"""One optimizer step of TRL's DPOTrainer on CPU: the tiny Llama of trainer_worker.py,
a word-level tokenizer built in memory, four preference pairs of very different
lengths, one pair per micro-batch, SGD. Rank 0 writes the applied update against a
plain PyTorch reference, the gradient of the mean DPO (sigmoid) loss over the pairs
of the step, and this process's gradfix report.

DPO batches carry no "labels", so Trainer has no num_items_in_batch for them and
DPO's loss is a micro-batch mean that Trainer must divide by GA.

    python -m torch.distributed.run --nproc_per_node 1 dpo_worker.py OUT [--accumulation 4] \
        [--zero-stage 2 [--offload]]
"""

import argparse
import copy
import json
import tempfile

import torch
from trainer_worker import LEARNING_RATE, VOCABULARY, deepspeed_config, shut_down, tiny_model

BETA = 0.1  # DPOConfig's default
PAD, EOS = 0, 1
PAIRS = ((2, 1, 3), (3, 30, 2), (1, 4, 20), (2, 12, 12))  # prompt, chosen and rejected lengths


def tokenizer():
    """Word-level, built in memory. The special tokens' names are no prefix of a word's
    (a special token is matched inside words before the split)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    names = {"<pad>": PAD, "<eos>": EOS, **{f"w{i}": i for i in range(2, VOCABULARY)}}
    words = Tokenizer(WordLevel(names, unk_token="<pad>"))
    words.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="<eos>",
                                   model_input_names=["input_ids", "attention_mask"])


def pairs():
    generator = torch.Generator().manual_seed(2)

    def words(count):
        return [int(i) for i in torch.randint(2, VOCABULARY, (count,), generator=generator)]

    return [{"prompt": words(p), "chosen": words(c), "rejected": words(r)} for p, c, r in PAIRS]


def completion_logp(model, prompt, completion):
    """Summed log-probability of ``completion`` + EOS after ``prompt``."""
    ids = torch.tensor([prompt + completion + [EOS]])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt):, None]).sum()


def reference_update(model, rows):
    """-lr * gradient of the mean sigmoid DPO loss over ``rows``. The reference model is
    the initial policy, so each log-ratio is the policy's log-probability minus its
    own detached value (0, with the policy's gradient)."""
    model = copy.deepcopy(model)
    losses = []
    for row in rows:
        chosen = completion_logp(model, row["prompt"], row["chosen"])
        rejected = completion_logp(model, row["prompt"], row["rejected"])
        margin = (chosen - chosen.detach()) - (rejected - rejected.detach())
        losses.append(-torch.nn.functional.logsigmoid(BETA * margin))
    (sum(losses) / len(losses)).backward()
    return [-LEARNING_RATE * p.grad for p in model.parameters()]


def as_text(ids):
    return " ".join(f"w{i}" for i in ids)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--zero-stage", type=int, help="run through DeepSpeed with this ZeRO stage (fp32)")
    parser.add_argument("--offload", action="store_true")
    options = parser.parse_args()

    import transformers
    import trl
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, rows = tiny_model(), pairs()
    before = [p.detach().clone() for p in model.parameters()]
    reference = reference_update(model, rows)
    dataset = Dataset.from_list([{key: as_text(value) for key, value in row.items()} for row in rows])
    extra = {}
    if options.zero_stage is not None:
        extra["deepspeed"] = deepspeed_config(options.zero_stage, options.offload)
    with tempfile.TemporaryDirectory() as output_dir:
        config = DPOConfig(output_dir=output_dir, per_device_train_batch_size=4 // options.accumulation,
                           gradient_accumulation_steps=options.accumulation, max_steps=1, beta=BETA,
                           learning_rate=LEARNING_RATE, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
                           weight_decay=0.0, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, seed=0,
                           bf16=False, **extra)
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer())
        logged = trainer.train().training_loss
    applied = [p.detach() - b for p, b in zip(model.parameters(), before)]
    squares = sum((r ** 2).sum() for r in reference)
    error = torch.sqrt(sum(((a - r) ** 2).sum() for a, r in zip(applied, reference)) / squares).item()
    scale = (sum((a * r).sum() for a, r in zip(applied, reference)) / squares).item()
    if trainer.args.process_index == 0:
        import gradfix

        with open(options.out, "w") as stream:
            json.dump({
                "transformers": transformers.__version__,
                "trl": trl.__version__,
                "model_accepts_loss_kwargs": trainer.model_accepts_loss_kwargs,
                "update_error": error,
                "update_scale": scale,
                "logged_loss": logged,
                "gradfix": {s.id: {"state": str(s.state), "hits": s.hits, "reason": s.reason}
                            for s in gradfix.status()},
            }, stream, indent=1)


if __name__ == "__main__":
    main()
    shut_down()
