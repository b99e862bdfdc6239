"""The paper's signature, to look at: SFT of a small causal language model (built
from a config, no downloads) with ZeRO-2 + CPU optimizer offload + GA 8 on CPU,
three ways: a buggy DeepSpeed release unpatched, the same release with gradfix
(GRADFIX=1 only), and the first fixed release. Writes the grad-norm and loss
curves to a PNG and the final differences to a Markdown table.

    python benchmarks/signature.py                      # 0.18.2 vs 0.19.0, 60 steps
    python -m nox -s signature                          # the same, in the cached environment

Needs the DeepSpeed releases installed by the nox `deepspeed` session, and matplotlib.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import _envs

HERE = Path(__file__).resolve().parent
VOCAB, WIDTH, LAYERS, HEADS, SEQ = 64, 64, 2, 4, 40
MICRO_BATCH, GA, LR, CLIP = 4, 8, 3e-3, 1.0


class TinyCausalLM:
    """A GPT-style decoder from a config dict: embeddings, causal self-attention
    blocks, a language-model head."""

    @staticmethod
    def build(config):
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Embedding(config["vocab"], config["width"])
                self.position = torch.nn.Embedding(config["seq"], config["width"])
                layer = torch.nn.TransformerEncoderLayer(config["width"], config["heads"], 4 * config["width"],
                                                         dropout=0.0, batch_first=True, norm_first=True)
                self.blocks = torch.nn.TransformerEncoder(layer, config["layers"], enable_nested_tensor=False)
                self.head = torch.nn.Linear(config["width"], config["vocab"])

            def forward(self, tokens):
                length = tokens.shape[1]
                mask = torch.nn.Transformer.generate_square_subsequent_mask(length)
                hidden = self.embed(tokens) + self.position(torch.arange(length))
                return self.head(self.blocks(hidden, mask=mask, is_causal=True))

        return Model()


def sft_batches(count):
    """Prompt + response samples of very uneven lengths; the response is the prompt
    reversed, so there is something to learn. Loss only on response tokens."""
    import torch

    generator = torch.Generator().manual_seed(7)
    batches = []
    for _ in range(count):
        tokens = torch.zeros(MICRO_BATCH, SEQ, dtype=torch.long)
        labels = torch.full((MICRO_BATCH, SEQ), -100, dtype=torch.long)
        for row in range(MICRO_BATCH):
            prompt = int(torch.randint(2, 19, (1,), generator=generator))
            body = torch.randint(2, VOCAB, (prompt,), generator=generator)
            sample = torch.cat([body, torch.tensor([1]), body.flip(0)])[:SEQ]
            tokens[row, :len(sample)] = sample
            labels[row, prompt:len(sample) - 1] = sample[prompt + 1:]
        batches.append((tokens, labels))
    return batches


def worker(steps):
    import deepspeed
    import torch

    _envs.single_process_distributed_env()
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = TinyCausalLM.build({"vocab": VOCAB, "width": WIDTH, "layers": LAYERS, "heads": HEADS, "seq": SEQ})
    config = {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": GA,
        "gradient_clipping": CLIP,
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=LR),
                                           config=config)
    losses, norms = [], []
    data = iter(sft_batches(steps * GA))
    for _ in range(steps):
        window = []
        for _ in range(GA):
            tokens, labels = next(data)
            logits = engine(tokens)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
            engine.backward(loss)
            engine.step()
            window.append(loss.item())
        losses.append(sum(window) / GA)
        norms.append(float(engine.get_global_grad_norm()))
    gradfix = sys.modules.get("gradfix")
    evidence = {s.id: s.evidence for s in gradfix.status() if s.state == "applied"} if gradfix else None
    print("CURVES " + json.dumps({"loss": losses, "grad_norm": norms, "gradfix": evidence}))


def run(releases, release, patched, steps):
    env = dict(_envs.deepspeed_release_env(releases, release, patched), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(steps)], env=env, cwd="/",
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CURVES ")]
    if proc.returncode or not lines:
        sys.exit(f"the run with DeepSpeed {release} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[0][len("CURVES "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=Path, default=Path.home() / ".cache" / "gradfix" / "deepspeed")
    parser.add_argument("--buggy", default="0.18.2")
    parser.add_argument("--fixed", default="0.19.0")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps)

    runs = {
        f"DeepSpeed {args.buggy}, unpatched": run(args.releases, args.buggy, False, args.steps),
        f"DeepSpeed {args.buggy} + gradfix": run(args.releases, args.buggy, True, args.steps),
        f"DeepSpeed {args.fixed} (first fixed)": run(args.releases, args.fixed, False, args.steps),
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (norm_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for (label, curves), style in zip(runs.items(), ("-", "--", ":")):
        steps = range(1, len(curves["loss"]) + 1)
        norm_axis.plot(steps, curves["grad_norm"], style, label=label, linewidth=2)
        loss_axis.plot(steps, curves["loss"], style, label=label, linewidth=2)
    norm_axis.set(title="gradient norm (before clipping)", xlabel="optimizer step")
    loss_axis.set(title="training loss (mean over the GA window)", xlabel="optimizer step")
    loss_axis.legend()
    figure.suptitle(f"SFT of a tiny causal LM, ZeRO-2 + CPU optimizer offload, GA {GA}, micro-batch {MICRO_BATCH}, "
                    "CPU")
    figure.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out / "signature.png", dpi=110)

    fixed = list(runs.values())[2]
    rows = ["| run | mean grad norm | final loss | max abs loss difference vs first fixed |",
            "| --- | --- | --- | --- |"]
    for label, curves in runs.items():
        gap = max(abs(a - b) for a, b in zip(curves["loss"], fixed["loss"]))
        mean_norm = sum(curves["grad_norm"]) / len(curves["grad_norm"])
        rows.append(f"| {label} | {mean_norm:.4f} | {curves['loss'][-1]:.4f} | {gap:.2e} |")
    table = "\n".join(rows)
    (args.out / "signature.md").write_text(table + "\n")
    print(table)
    print(f"gradfix evidence: {list(runs.values())[1]['gradfix']}")
    print(f"wrote {args.out / 'signature.png'} and {args.out / 'signature.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
