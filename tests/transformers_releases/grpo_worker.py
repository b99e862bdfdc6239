"""One optimizer step of TRL's GRPOTrainer on CPU: the tiny Llama of trainer_worker.py
(its end-of-sequence logit raised so that about half of the completions end before
max_completion_length), a word-level tokenizer built in memory, prompts of three
tokens, a reward that grows with the completion's length. Rank 0 writes the applied
update against a plain PyTorch reference computed from the generation batch the step
trained on, with the normalisation of the fixed TRL (1.9.1): the token sum of the
window's loss divided by the loss-mask token count of the generation batch x GA /
steps_per_generation. And this process's gradfix report.

    python -m torch.distributed.run --nproc_per_node 1 grpo_worker.py OUT --loss-type dapo \
        --steps-per-generation 4 --accumulation 2 [--mask-truncated]
    python -m torch.distributed.run --nproc_per_node 1 grpo_worker.py OUT --jobs JOBS.json

With --jobs, as trainer_worker.py: each option list of JOBS.json in turn, one result each.
"""

import argparse
import copy
import tempfile

import torch
from trainer_worker import LEARNING_RATE, VOCABULARY, serve, shut_down, tiny_model


def tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(WordLevel({f"t{i}": i for i in range(VOCABULARY)}, unk_token="t0"))
    words.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", eos_token="t1",
                                   model_input_names=["input_ids", "attention_mask"])


EOS = 1
EPSILON = 0.2  # GRPOConfig's default clipping range


def raise_end_of_sequence(model, prompts):
    """Point the lm_head row of EOS along the mean final hidden state: the tiny model
    then ends about half of its completions early instead of almost none."""
    with torch.no_grad():
        hidden = model(prompts, output_hidden_states=True).hidden_states[-1].reshape(-1, model.config.hidden_size)
        direction = hidden.mean(0)
        model.lm_head.weight[EOS] = 2.5 * direction / direction.norm()


def reference_update(model, batch, window, spread):
    """-lr * gradient of the dapo loss of the first ``window`` micro-batches of the
    generation batch (one rank), normalised as the fixed TRL does."""
    model = copy.deepcopy(model)
    masks = [b["completion_mask"] * b["tool_mask"] if b.get("tool_mask") is not None else b["completion_mask"]
             for b in batch]
    normaliser = max(sum(float(m.sum()) for m in masks), 1.0) * window / spread
    loss = 0.0
    for micro, mask in zip(batch[:window], masks):
        prompt, completion = micro["prompt_ids"], micro["completion_ids"]
        ids = torch.cat([prompt, completion], dim=1)
        attention = torch.cat([micro["prompt_mask"], micro["completion_mask"]], dim=1)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, prompt.shape[1] - 1:-1].float()
        logps = torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logps - logps.detach())  # 1, with the gradient of the log-probabilities
        advantages = micro["advantages"].unsqueeze(1)
        per_token = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - EPSILON, 1 + EPSILON) * advantages)
        loss = loss + (per_token * mask).sum()
    (loss / normaliser).backward()
    return [-LEARNING_RATE * p.grad for p in model.parameters()]


def reward_length(completions, **kwargs):
    return [float(len(c.split())) for c in completions]


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--loss-type", default="dapo")
    parser.add_argument("--steps-per-generation", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--mask-truncated", action="store_true")
    return parser.parse_args(argv)


def train(options):
    """One GRPO optimizer step; its result on rank 0 (None on the other ranks)."""
    import gradfix
    import trl
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model = tiny_model()
    ids = [[2 + (i * 7 + j) % (VOCABULARY - 2) for j in range(3)] for i in range(16)]
    raise_end_of_sequence(model, torch.tensor(ids))
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = 0
    initial = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    prompts = [{"prompt": " ".join(f"t{i}" for i in row)} for row in ids]
    with tempfile.TemporaryDirectory() as output_dir:
        config = GRPOConfig(
            output_dir=output_dir, per_device_train_batch_size=2, num_generations=2,
            steps_per_generation=options.steps_per_generation, gradient_accumulation_steps=options.accumulation,
            max_completion_length=6, max_steps=1, learning_rate=LEARNING_RATE, optim="sgd",
            lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, beta=0.0, loss_type=options.loss_type,
            mask_truncated_completions=options.mask_truncated, report_to=[], save_strategy="no", logging_steps=1,
            seed=0, use_cpu=True, bf16=False, temperature=1.0)
        trainer = GRPOTrainer(model=model, reward_funcs=reward_length, args=config,
                              train_dataset=Dataset.from_list(prompts), processing_class=tokenizer())
        trainer.train()
    applied = [p.detach() - b for p, b in zip(model.parameters(), before)]
    batch = trainer._buffered_inputs
    reference = reference_update(initial, batch, options.accumulation, options.steps_per_generation)
    squares = sum((r ** 2).sum() for r in reference)
    error = torch.sqrt(sum(((a - r) ** 2).sum() for a, r in zip(applied, reference)) / squares).item()
    scale = (sum((a * r).sum() for a, r in zip(applied, reference)) / squares).item()
    if trainer.args.process_index != 0:
        return None
    return {
        "trl": trl.__version__,
        "update_error": error,
        "update_scale": scale,
        "update": [a.flatten()[:32].tolist() for a in applied],
        "num_items_in_batch": [float(b["num_items_in_batch"]) for b in batch if "num_items_in_batch" in b],
        "completion_tokens": [float(b["completion_mask"].sum()) for b in batch],
        "truncated": sum(int(b["completion_mask"].sum(1).eq(0).sum()) for b in batch),
        "gradfix": {s.id: {"state": str(s.state), "hits": s.hits} for s in gradfix.status()},
    }


if __name__ == "__main__":
    serve(train, parse)
    shut_down()
