"""Train a tiny model a few optimizer steps with real DeepSpeed on CPU, or with a
plain PyTorch loop doing the same accumulation, and print the parameters after
every optimizer step and the gradient norms as JSON on a line ``RESULT <json>``.

    python ds_train.py --mode deepspeed --stage 2 --offload cpu --ga 4
    python ds_train.py --mode reference --ga 4
    python ds_train.py --mode deepspeed --ga 1 --backwards 4   # several backward() per step

Single process; gloo on the CPU accelerator (DS_ACCELERATOR=cpu).
"""

import argparse
import json
import os

import torch

MICRO_BATCH, IN, HIDDEN, OUT, LR = 2, 8, 16, 4, 0.1


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, OUT))


def batches(count):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(MICRO_BATCH, IN, generator=generator), torch.randn(MICRO_BATCH, OUT, generator=generator))
            for _ in range(count)]


def flat(net):
    return torch.cat([p.detach().float().reshape(-1) for p in net.parameters()]).tolist()


def run_reference(args):
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    per_step = max(args.ga, args.backwards)
    data = batches(args.steps * per_step)
    params, norms = [], []
    for step in range(args.steps):
        for x, y in data[step * per_step:(step + 1) * per_step]:
            loss = torch.nn.functional.mse_loss(net(x), y)
            (loss / args.ga).backward()  # DeepSpeed divides each micro-batch loss by GA
        grads = [p.grad.reshape(-1) for p in net.parameters()]
        norms.append(torch.cat(grads).norm().item())
        if args.clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad()
        params.append(flat(net))
    return params, norms


def run_deepspeed(args):
    import deepspeed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 2000))
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_SIZE", "1")):
        os.environ.setdefault(name, value)
    deepspeed.init_distributed(dist_backend="gloo")
    zero = {"stage": args.stage}
    if args.offload != "none":
        zero["offload_optimizer"] = {"device": args.offload}
    config = {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": args.ga,
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": args.clip,
        "steps_per_print": 10**9,
    }
    net = model()
    engine, _, _, _ = deepspeed.initialize(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=LR), config=config)
    per_step = max(args.ga, args.backwards)
    data = batches(args.steps * per_step)
    params, norms = [], []
    for step in range(args.steps):
        chunk = data[step * per_step:(step + 1) * per_step]
        for index, (x, y) in enumerate(chunk):
            loss = torch.nn.functional.mse_loss(engine(x), y)
            if args.backwards > 1:
                engine.set_gradient_accumulation_boundary(index == len(chunk) - 1)
                engine.backward(loss)
            else:
                engine.backward(loss)
                engine.step()
        if args.backwards > 1:
            engine.step()
        norm = engine.get_global_grad_norm()
        norms.append(float(norm) if norm is not None else None)
        params.append(flat(engine.module))
    return params, norms


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("deepspeed", "reference"), required=True)
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--offload", choices=("cpu", "none"), default="cpu")
    parser.add_argument("--ga", type=int, default=4)
    parser.add_argument("--backwards", type=int, default=1, help="backward() calls per step with GA 1")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--clip", type=float, default=0.0)
    args = parser.parse_args()
    params, norms = (run_deepspeed if args.mode == "deepspeed" else run_reference)(args)
    result = {"params": params, "grad_norms": norms}
    import sys

    gradfix = sys.modules.get("gradfix")
    if gradfix is not None:
        result["gradfix"] = {s.id: {"state": s.state, "hits": s.hits, "reason": s.reason} for s in gradfix.status()}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
