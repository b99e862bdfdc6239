"""One training run for `gradfix verify` (and the DeepSpeed release tests): a tiny
model trained a few optimizer steps with real DeepSpeed, or with a plain PyTorch
loop doing the same accumulation in fp32 (the reference). Prints one line
``RESULT <json>`` with the parameters after every optimizer step, the gradient
norms and, when gradfix is imported, its patch records.

    python -m gradfix.verify.worker --mode deepspeed --config ds.json
    python -m gradfix.verify.worker --mode reference --config ds.json --world 2
    python -m gradfix.verify.worker --mode deepspeed --config ds.json --pipeline-stages 2  (under torchrun)
    python -m gradfix.verify.worker --mode deepspeed --config ds.json --calls tensor:engine,model-output:direct

``--calls`` trains once per call shape in the same process (gradfix.verify.calls): what the
model returns and how backward is called. The top-level result is the first
call's; ``calls`` holds every call's result by name.

The DeepSpeed run takes its rank and world size from the usual environment
variables (set by torchrun); with none set it runs as a single process. Each rank
trains on its own micro-batches; the reference averages over all of them, as
DeepSpeed's data-parallel reduction does.
"""

import argparse
import json
import os
import socket
import sys

import torch


def _load_calls():
    """gradfix/verify/calls.py, loaded by its path: importing it as gradfix.verify.calls
    would import (and so activate) gradfix in a run that must be without it."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.py")
    spec = importlib.util.spec_from_file_location("_gradfix_verify_calls", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CALLS = _load_calls()
DEFAULT_CALL, parse_calls = _CALLS.DEFAULT_CALL, _CALLS.parse_calls

IN, HIDDEN, OUT, LR = 8, 16, 4, 0.1


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, OUT))


def micro_batch(step, micro, rank, size):
    """The micro-batch of one rank, the same in every run and independent of the others."""
    generator = torch.Generator().manual_seed(1_000_003 * step + 1_009 * micro + rank)
    return torch.randn(size, IN, generator=generator), torch.randn(size, OUT, generator=generator)


AUX_WEIGHT = 0.1  # of the auxiliary loss a model adds to its loss (a MoE router's, say)


def model_loss(net, x, y, aux=False):
    """The tiny model's loss, prediction, hidden activation and auxiliary loss (None
    without ``aux``): what ReturnsOutputs computes inside the model and the reference
    computes plainly."""
    hidden = net[1](net[0](x))
    logits = net[2](hidden)
    loss = torch.nn.functional.mse_loss(logits, y)
    aux_loss = AUX_WEIGHT * hidden.pow(2).mean() if aux else None
    return (loss if aux_loss is None else loss + aux_loss), logits, hidden, aux_loss


class ReturnsOutputs(torch.nn.Module):
    """The tiny model computing its own loss and returning it with other tensors on
    its graph, the way a transformers model called with ``labels`` does."""

    def __init__(self, net, output):
        super().__init__()
        self.net, self.output = net, output

    def forward(self, x, y):
        loss, logits, hidden, aux_loss = model_loss(self.net, x, y, aux=self.output == "aux")
        if self.output == "loss":
            return loss
        if self.output == "model-output":
            return {"loss": loss, "logits": logits}
        if self.output == "aux":  # the loss includes the auxiliary loss, returned beside it
            return {"loss": loss, "aux_loss": aux_loss, "logits": logits}
        return loss, logits, hidden


class Checkpointed(torch.nn.Module):
    """The tiny model with its first layers under activation checkpointing."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        hidden = checkpoint(lambda t: self.net[1](self.net[0](t)), x, use_reentrant=False)
        return self.net[2](hidden)


def shared_batch(step, micro, rank, size):
    """The second micro-batch of a shared loss."""
    return micro_batch(step, micro + 10_000, rank, size)


def flat(net):
    return torch.cat([p.detach().float().reshape(-1).cpu() for p in net.parameters()]).tolist()


def window(config, backwards):
    """(micro-batch size, backward() calls per optimizer step, GA divisor)."""
    ga = int(config.get("gradient_accumulation_steps", 1))
    return int(config.get("train_micro_batch_size_per_gpu", 1)), max(ga, backwards), ga


def run_reference(config, args, call=DEFAULT_CALL):
    """Plain PyTorch, fp32. Every call shape has the same maths except those whose loss
    adds a second forward (shared, two-forwards) or an auxiliary loss (aux)."""
    output = call.partition(":")[0]
    size, per_step, ga = window(config, args.backwards)
    clip = float(config.get("gradient_clipping", 0.0) or 0.0)
    net = build_model()
    initial = flat(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr)
    params, norms = [], []
    for step in range(args.steps):
        for rank in range(args.world):
            for micro in range(per_step):
                x, y = micro_batch(step, micro, rank, size)
                loss = model_loss(net, x, y, aux=output == "aux")[0]
                if output in ("shared", "two-forwards"):
                    loss = loss + model_loss(net, *shared_batch(step, micro, rank, size))[0]
                (loss / (ga * args.world)).backward()  # DeepSpeed: 1/GA per micro-batch, mean over ranks
        norms.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]).norm().item())
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        params.append(flat(net))
    return {"initial": initial, "params": params, "grad_norms": norms, "world": args.world}


def _distributed_environment(device):
    # LOCAL_SIZE 0: DeepSpeed's CPU shared-memory all-reduce stays off (reductions go
    # through gloo). It would leave a 64 MiB file in /dev/shm behind after every run.
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "0",
                "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    if "MASTER_PORT" not in os.environ:  # a single process: any port nobody listens on
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def run_deepspeed(config, args):
    deepspeed = start_deepspeed(args.device)
    result = train_calls(deepspeed, config, args)
    stop_deepspeed()
    return result


def start_deepspeed(device):
    _distributed_environment(device)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl")
    return deepspeed


def stop_deepspeed():
    if torch.distributed.is_initialized():  # a clean shutdown: gloo aborts at exit otherwise
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def train_calls(deepspeed, config, args):
    results = {call: _train_or_report(deepspeed, config, args, call) for call in args.calls}
    return dict(results[args.calls[0]], calls=results)


def _train_or_report(deepspeed, config, args, call):
    """A call shape that DeepSpeed fails on (loudly) is reported as failed; the other
    shapes still run, each on an engine of its own."""
    try:
        return train_deepspeed(deepspeed, config, args, call)
    except Exception as exc:  # noqa: BLE001 - reported to the caller, who decides
        return {"failed": f"{type(exc).__name__}: {exc}"[:300], "deepspeed": deepspeed.__version__}


def direct_backward_unsupported(engine):
    """Why this engine refuses ``loss.backward()`` (None when it takes it)."""
    if not hasattr(engine, "_support_torch_style_backward"):
        return "this DeepSpeed release has no direct loss.backward() (0.18.3 and later have)"
    if not engine._support_torch_style_backward:
        return "DeepSpeed takes direct loss.backward() only with a ZeRO optimizer (stage 1 or more)"
    return None


def micro_batch_loss(engine, output, batch, second_batch):
    (x, y), (x2, y2) = batch, second_batch
    mse = torch.nn.functional.mse_loss
    if output in ("tensor", "checkpoint"):
        return mse(engine(x), y)
    if output == "shared":
        return mse(engine(x), y) + mse(engine.module(x2), y2)
    if output == "two-forwards":
        return mse(engine(x), y) + mse(engine(x2), y2)
    if output == "eval-forward":  # an evaluation forward between a forward and its backward
        loss = mse(engine(x), y)
        with torch.no_grad():
            engine(x2)
        return loss
    outputs = engine(x, y)
    if output == "loss":
        return outputs
    return outputs["loss"] if output in ("model-output", "aux") else outputs[0]


def model_for(net, output):
    if output in ("tensor", "shared", "two-forwards", "eval-forward"):
        return net
    return Checkpointed(net) if output == "checkpoint" else ReturnsOutputs(net, output)


def train_deepspeed(deepspeed, config, args, call):
    """One training run of the tiny model with one call shape."""
    output, _, backward = call.partition(":")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    size, per_step, _ = window(config, args.backwards)
    net = build_model()
    initial = flat(net)
    model = model_for(net, output)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=args.lr),
                                           config=config)
    if backward == "direct" and direct_backward_unsupported(engine):
        return {"skipped": direct_backward_unsupported(engine), "deepspeed": deepspeed.__version__}
    dtype = next(engine.module.parameters()).dtype
    device = next(engine.module.parameters()).device
    cast = lambda batch: tuple(t.to(device=device, dtype=dtype) for t in batch)  # noqa: E731
    several_backwards = args.backwards > 1
    params, norms = [], []
    for step in range(args.steps):
        for micro in range(per_step):
            loss = micro_batch_loss(engine, output, cast(micro_batch(step, micro, rank, size)),
                                    cast(shared_batch(step, micro, rank, size)))
            if several_backwards and args.mark_boundaries:  # the caller marks the inner backwards itself
                engine.set_gradient_accumulation_boundary(micro == per_step - 1)
            if backward == "direct":
                (engine.scale(loss) if (config.get("fp16") or {}).get("enabled") else loss).backward()
            elif args.user_scaled_loss:  # as Hugging Face Accelerate does
                engine.backward(loss / engine.gradient_accumulation_steps(), scale_wrt_gas=False)
            else:
                engine.backward(loss)
            if not several_backwards:
                engine.step()
        if several_backwards:
            engine.step()
        norm = engine.get_global_grad_norm()
        norms.append(float(norm) if norm is not None else None)
        params.append(flat(engine.module))
    return {"initial": initial, "params": params, "grad_norms": norms, "world": world, "rank": rank,
            "deepspeed": deepspeed.__version__, "dtype": str(dtype).replace("torch.", "")}


def _stage_parameters(engine):
    """Every stage's parameters in model order (data-parallel replica 0), on every rank."""
    mine = (engine.stage_id, engine.grid.get_data_parallel_rank(), flat(engine.module))
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return [value for stage, replica, values in sorted(gathered) if replica == 0 for value in values]


def run_pipeline(config, args):
    """The same model as a ``PipelineModule`` of ``args.pipeline_stages`` stages, one
    ``train_batch()`` (GA micro-batches) per optimizer step. The processes are split
    into stages first, data-parallel replicas second."""
    _distributed_environment(args.device)
    import deepspeed
    from deepspeed.pipe import PipelineModule

    deepspeed.init_distributed(dist_backend="gloo" if args.device == "cpu" else "nccl")
    size, _, ga = window(config, 1)
    net = build_model()
    initial = flat(net)
    module = PipelineModule(layers=list(net), num_stages=args.pipeline_stages, loss_fn=torch.nn.MSELoss(),
                            partition_method="uniform")
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=torch.optim.SGD(module.parameters(), lr=args.lr),
                                           config=config)
    replica = engine.grid.get_data_parallel_rank()
    dtype = next(engine.module.parameters()).dtype
    device = next(engine.module.parameters()).device
    params, norms = [], []
    for step in range(args.steps):
        batches = [tuple(t.to(device=device, dtype=dtype) for t in micro_batch(step, micro, replica, size))
                   for micro in range(ga)]
        engine.train_batch(data_iter=iter(batches))
        norm = engine.get_global_grad_norm()
        norms.append(float(norm) if norm is not None else None)
        params.append(_stage_parameters(engine))
    records = [None] * torch.distributed.get_world_size()  # each stage corrects its own part of the backward
    torch.distributed.all_gather_object(records, gradfix_records())
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return {"initial": initial, "params": params, "grad_norms": norms,
            "world": engine.grid.get_data_parallel_world_size(), "rank": int(os.environ["RANK"]),
            "stages": args.pipeline_stages, "deepspeed": deepspeed.__version__,
            "dtype": str(dtype).replace("torch.", ""),
            "gradfix": merged_records(records), "gradfix_by_rank": records}


def merged_records(by_rank):
    """One record per patch for a job whose ranks correct different parts (the stages
    of a pipeline): the record of the rank that corrected most, with every rank's hits."""
    if not any(by_rank):
        return None
    merged = {}
    for rank, records in enumerate(by_rank):
        for patch_id, record in (records or {}).items():
            if patch_id not in merged or record["hits"] > merged[patch_id][1]["hits"]:
                merged[patch_id] = (rank, record)
    result = {}
    for patch_id, (rank, record) in merged.items():
        total = sum((records or {}).get(patch_id, {}).get("hits", 0) for records in by_rank)
        evidence = record["evidence"] + (f" (rank {rank}; {total} on all {len(by_rank)} ranks)"
                                         if total != record["hits"] else "")
        result[patch_id] = dict(record, hits=total, evidence=evidence)
    return result


def gradfix_records():
    gradfix = sys.modules.get("gradfix")
    if gradfix is None:
        return None
    return {s.id: {"state": s.state, "hits": s.hits, "evidence": s.evidence, "reason": s.reason}
            for s in gradfix.status()}


def run_jobs(jobs, args):
    """Several runs in this one process, one after the other (the release tests batch
    them: a process start costs more than a run). Each job names its ``config`` and may
    set ``backwards``, ``mark_boundaries``, ``user_scaled_loss``, ``lr`` and ``calls``; each result's gradfix records
    count the hits of that job alone."""
    deepspeed = start_deepspeed(args.device) if args.mode == "deepspeed" else None
    results = []
    for job in jobs:
        job_args = argparse.Namespace(**vars(args))
        job_args.backwards = job.get("backwards", 1)
        job_args.user_scaled_loss = job.get("user_scaled_loss", False)
        job_args.mark_boundaries = job.get("mark_boundaries", True)
        job_args.lr = job.get("lr", LR)
        job_args.calls = job.get("calls") or [DEFAULT_CALL]
        before = gradfix_records()
        if deepspeed is None:
            calls = {call: run_reference(job["config"], job_args, call) for call in job_args.calls}
            result = dict(calls[job_args.calls[0]], calls=calls)
        else:
            result = train_calls(deepspeed, job["config"], job_args)
        result["gradfix"] = _hits_since(before, gradfix_records())
        results.append(result)
    if deepspeed is not None:
        stop_deepspeed()
    return results


def _hits_since(before, after):
    if after is None:
        return None
    return {patch_id: dict(record, hits=record["hits"] - (before or {}).get(patch_id, {}).get("hits", 0),
                           evidence="(hits of this job only)")
            for patch_id, record in after.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("deepspeed", "reference"), required=True)
    parser.add_argument("--config", help="DeepSpeed JSON with every value resolved")
    parser.add_argument("--jobs", help="a JSON list of runs for this one process (see run_jobs); prints "
                        "RESULTS <json list>")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backwards", type=int, default=1, help="backward() calls per optimizer step (GA 1)")
    parser.add_argument("--world", type=int, default=1, help="reference only: data-parallel ranks to average")
    parser.add_argument("--pipeline-stages", type=int, default=0,
                        help="deepspeed only: train the model as a PipelineModule of this many stages")
    parser.add_argument("--calls", type=parse_calls, default=[DEFAULT_CALL],
                        help="call shapes OUTPUT:BACKWARD, comma-separated (gradfix.verify.calls)")
    parser.add_argument("--lr", type=float, default=LR, help="SGD learning rate")
    parser.add_argument("--unmarked", dest="mark_boundaries", action="store_false",
                        help="with --backwards N: do not mark the inner backwards with "
                        "set_gradient_accumulation_boundary (a caller that does not know it should)")
    parser.add_argument("--user-scaled-loss", action="store_true",
                        help="divide the loss by GA here and call engine.backward(loss, scale_wrt_gas=False)")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.jobs):
        parser.error("give either --config or --jobs")
    torch.backends.cuda.matmul.allow_tf32 = False  # keep GPU runs comparable with the fp32 reference
    if args.jobs:
        with open(args.jobs) as handle:
            results = run_jobs(json.load(handle), args)
        if int(os.environ.get("RANK", "0")) == 0:  # ranks hold the same parameters; one line, not interleaved
            print("RESULTS " + json.dumps(results), flush=True)
        return
    with open(args.config) as handle:
        config = json.load(handle)
    if args.mode == "reference":
        calls = {call: run_reference(config, args, call) for call in args.calls}
        result = dict(calls[args.calls[0]], calls=calls)
    else:
        result = (run_pipeline if args.pipeline_stages else run_deepspeed)(config, args)
    if "gradfix" not in result:
        result["gradfix"] = gradfix_records()
    if result.get("rank", 0) == 0:
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
