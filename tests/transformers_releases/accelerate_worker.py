"""accelerate + DeepSpeed driven by a plain loop that never uses ``accelerator.accumulate``:
nothing sets sync_gradients, so the engine's own micro-batch count decides the
accumulation windows, which such a script relies on. Six micro-batches at GA 4 (one
step, then two micro-batches left over). Writes the final weights and the gradfix report.

    python -m torch.distributed.run --nproc_per_node 1 accelerate_worker.py OUT
"""

import json
import sys

import torch
from trainer_worker import shut_down


def main(out):
    import accelerate
    from accelerate import Accelerator, DeepSpeedPlugin

    torch.manual_seed(0)
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=4))
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.DataLoader(torch.randn(6, 4), batch_size=1)
    model, optimizer, data = accelerator.prepare(model, optimizer, data)
    for inputs in data:
        accelerator.backward(model(inputs).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
    import gradfix

    with open(out, "w") as stream:
        json.dump({
            "accelerate": accelerate.__version__,
            "weights": [p.detach().flatten().tolist() for p in model.parameters()],
            "engine_steps": model.global_steps,
            "gradfix": {s.id: {"state": str(s.state), "hits": s.hits} for s in gradfix.status()},
        }, stream, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    shut_down()
