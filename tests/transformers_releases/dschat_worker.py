"""The canonical DeepSpeed training loop (DeepSpeed-Chat, most research code) with a real
transformers model: ``out = engine(input_ids=..., labels=...)`` then
``engine.backward(out.loss)`` (or a direct ``out.loss.backward()``), GA micro-batches per
``engine.step()``. A tiny LlamaForCausalLM built from a config, SGD, fp32, ZeRO-2, one
rank; the plain PyTorch reference (each micro-batch's loss divided by GA, one SGD step per
window) runs in the same process from the same initial weights.

    python dschat_worker.py OUT --backward engine|direct [--ga 4] [--steps 2]

Writes {"update_error", "gradfix", "deepspeed", "transformers"} to OUT.
"""

import argparse
import copy
import json
import os
import socket
import sys

import torch

LR = 0.1


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return LlamaForCausalLM(config).float()


def batches(steps, ga):
    generator = torch.Generator().manual_seed(7)
    return [[torch.randint(0, 64, (2, 12), generator=generator) for _ in range(ga)] for _ in range(steps)]


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def reference(model, data, ga):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for window in data:
        for ids in window:
            (model(input_ids=ids, labels=ids).loss / ga).backward()
        optimizer.step()
        optimizer.zero_grad()
    return flat(model)


def with_deepspeed(model, data, ga, backward):
    import deepspeed

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "0",
                        "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(name, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(probe.getsockname()[1]))
    deepspeed.init_distributed(dist_backend="gloo")
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": ga, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True,
              "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                                           config=config)
    for window in data:
        for ids in window:
            out = engine(input_ids=ids, labels=ids)
            engine.backward(out.loss) if backward == "engine" else out.loss.backward()
            engine.step()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return flat(engine.module), deepspeed.__version__


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--backward", choices=("engine", "direct"), default="engine")
    parser.add_argument("--ga", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    options = parser.parse_args()
    model = tiny_llama()
    initial = flat(model)
    data = batches(options.steps, options.ga)
    want = reference(copy.deepcopy(model), data, options.ga)
    got, version = with_deepspeed(model, data, options.ga, options.backward)
    gradfix = sys.modules.get("gradfix")
    import transformers

    result = {"update_error": ((got - want).norm() / (want - initial).norm()).item(), "deepspeed": version,
              "transformers": transformers.__version__,
              "gradfix": {s.id: {"state": s.state, "hits": s.hits} for s in gradfix.status()} if gradfix else None}
    with open(options.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
