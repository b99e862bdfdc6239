"""`gradfix verify`: does the installed DeepSpeed accumulate gradients correctly for
a configuration, and does gradfix make it so?

It trains a tiny model a few optimizer steps three times, each in its own process:
with DeepSpeed and gradfix off, with DeepSpeed and gradfix on, and as a plain
PyTorch fp32 loop doing the same accumulation (the reference). Each process trains
it once per call shape (what the model returns, how backward is called: DeepSpeed
0.18.3 and later scale these differently). It prints how far each step's parameters
are from the reference (relative to the reference's update) and the gradient norm
of every step, which call shapes are wrong, which patches acted, and a verdict.

Exit codes: 0 the run with gradfix matches the reference; 1 it does not; 2 verify
could not run (no DeepSpeed, bad configuration, a run failed).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from . import calls as call_shapes, compare, dsconfig

OK, WRONG, CANNOT_RUN = 0, 1, 2
RUNS = (  # label, worker mode, GRADFIX value
    ("reference", "reference", "0"),
    ("without gradfix", "deepspeed", "0"),
    ("with gradfix", "deepspeed", "1"),
)


class RunFailed(Exception):
    pass


def _device(requested):
    if requested != "auto":
        return requested
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _worker_env(gradfix_value, device):
    launcher_variables = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                          "MASTER_PORT")  # each run is a single process of its own
    env = {k: v for k, v in os.environ.items() if k not in launcher_variables}
    env["GRADFIX"] = gradfix_value
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    return env


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(mode, gradfix_value, config_path, options):
    worker = ["gradfix.verify.worker", "--mode", mode, "--config", config_path, "--device", options.device,
              "--steps", str(options.steps), "--backwards", str(options.backwards)]
    if not options.pipeline_stages:
        worker += ["--calls", ",".join(getattr(options, "calls", None) or call_shapes.VERIFY_CALLS)]
    processes = options.ranks * max(options.pipeline_stages, 1)
    if mode == "reference":
        argv = [sys.executable, "-m", *worker, "--world", str(options.ranks)]
    elif processes > 1:  # ranks and stages on this machine, started the way torchrun does
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(_free_port()), "-m", *worker, "--pipeline-stages", str(options.pipeline_stages)]
    else:
        argv = [sys.executable, "-m", *worker, "--pipeline-stages", str(options.pipeline_stages)]
    return subprocess.Popen(argv, env=_worker_env(gradfix_value, options.device), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(label, process, timeout):
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise RunFailed(f"the run {label} took longer than {timeout} s (--timeout)") from None
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RunFailed(f"the run {label} failed (exit code {process.returncode}):\n{_error_tail(stderr or stdout)}"
                        f"{_hint(stderr or stdout)}")
    return json.loads(lines[-1][len("RESULT "):])


def _error_tail(text, lines=12):
    """The end of a failed run's output, without the noise of destructors that fail
    after the real error."""
    text = text.split("Exception ignored in:")[0].strip()
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def _hint(text):
    if "fp16 is not supported" in text:
        return ("\nDeepSpeed's CPU accelerator has no fp16. Run verify where the job runs (--device cuda), or "
                "check the same accumulation path with --precision bf16.")
    if "No module named" in text:
        return "\nThe runs use this Python environment; install what is missing there."
    return ""


def _deepspeed_importable():
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def run_all(config, options):
    """Run the three concurrently and return their results by label."""
    with tempfile.TemporaryDirectory(prefix="gradfix-verify-") as folder:
        config_path = os.path.join(folder, "ds_config.json")
        with open(config_path, "w") as handle:
            json.dump(config, handle)
        processes = [(label, _start(mode, value, config_path, options)) for label, mode, value in RUNS]
        results, failure = {}, None
        for label, process in processes:
            try:
                results[label] = _result(label, process, options.timeout)
            except RunFailed as exc:
                failure = failure or exc
        if failure:
            raise failure
        return results


def _verdict(without, with_fix, version):
    if with_fix.correct and not without.correct:
        return OK, (f"DeepSpeed {version} computes wrong gradients for this configuration; with gradfix "
                    "they match the reference. Keep gradfix active in every process of these runs.")
    if with_fix.correct:
        return OK, f"DeepSpeed {version} accumulates this configuration correctly; gradfix changes nothing here."
    if without.correct:
        return WRONG, ("the run WITH gradfix is wrong and the one without is right: run without gradfix "
                       "(GRADFIX=0) and report this output to the gradfix maintainers.")
    return WRONG, (f"DeepSpeed {version} computes wrong gradients for this configuration and gradfix does "
                   "not correct them: this is a bug gradfix does not cover (yet). Please report this output "
                   "to the gradfix maintainers.")


class Outcome:
    """The three runs compared, call shape by call shape: exit code and verdict."""

    def __init__(self, config, changes, results):
        self.config, self.changes, self.results = config, changes, results
        self.precision = dsconfig.precision_of(config)
        self.version = results["without gradfix"].get("deepspeed", "?")
        self.by_call = self._compare_calls()
        self.combined = {label: compare.Combined([c[label] for c in self.by_call.values() if c])
                         for label in ("without gradfix", "with gradfix")}
        if not self.combined["with gradfix"].comparisons:
            reason = next(iter(self.not_run.values()), "")
            self.code, self.verdict = CANNOT_RUN, (f"DeepSpeed {self.version} ran none of the call shapes asked "
                                                   f"for with this configuration: {reason}{_hint(reason)}")
        else:
            self.code, self.verdict = _verdict(self.combined["without gradfix"], self.combined["with gradfix"],
                                               self.version)

    def _compare_calls(self):
        """call -> {label: Comparison}, or None where the release cannot run that call."""
        calls = self.results["reference"].get("calls") or {}
        compared, self.not_run = {}, {}
        if any("calls" not in self.results[label] for label in ("without gradfix", "with gradfix")):
            calls = {}  # a pipeline trains through train_batch() only: no call shapes
        for call in calls:
            runs = {label: self.results[label]["calls"][call] for label in ("without gradfix", "with gradfix")}
            unrun = [run.get("skipped") or f"DeepSpeed failed: {run['failed']}" for run in runs.values()
                     if "skipped" in run or "failed" in run]
            if unrun:
                compared[call] = None
                self.not_run[call] = unrun[0]
                continue
            compared[call] = {label: compare.Comparison(run, calls[call], self.precision) for label, run in runs.items()}
        if compared:
            return compared
        return {None: {label: compare.Comparison(self.results[label], self.results["reference"], self.precision)
                       for label in ("without gradfix", "with gradfix")}}  # a pipeline: one shape

    def shown_call(self):
        """The call shape the main table details: the first one wrong without gradfix, or
        the first one (None for a run without call shapes: a pipeline)."""
        wrong = self.wrong_calls("without gradfix")
        ran = [call for call, runs in self.by_call.items() if runs]
        return wrong[0] if wrong else (ran or [None])[0]

    def _shown_comparison(self, label):
        """The shown call's comparison and grad norms, as a dict ({} when no call ran)."""
        shown = self.shown_call()
        runs = self.by_call.get(shown)
        if not runs:
            return {}
        return dict(runs[label].to_dict(), grad_norms=self._call_result(label, shown)["grad_norms"])

    def _call_result(self, label, call):
        return self.results[label] if call is None else self.results[label]["calls"][call]

    def wrong_calls(self, label):
        return [call for call, runs in self.by_call.items() if runs and not runs[label].correct]

    def to_dict(self):
        return {"deepspeed": self.version, "config": self.config, "changes": self.changes,
                "precision": self.precision, "verdict": self.verdict, "exit_code": self.code,
                "shown_call": self.shown_call(),
                "reference_grad_norms": self._call_result("reference", self.shown_call()).get("grad_norms"),
                "runs": {label: dict(self._shown_comparison(label), gradfix=self.results[label].get("gradfix"),
                                     correct=self.combined[label].correct, wrong_calls=self.wrong_calls(label))
                         for label in ("without gradfix", "with gradfix")},
                "calls": {call: ({"not_run": self.not_run[call]} if runs is None
                                 else {label: c.to_dict() for label, c in runs.items()})
                          for call, runs in self.by_call.items() if call is not None}}

    def write(self, out):
        say = lambda line="": print(line, file=out)  # noqa: E731
        reference = self.results["reference"]
        ranks = reference.get("world", 1)
        stages = self.results["without gradfix"].get("stages", 0)
        say(f"gradfix verify: DeepSpeed {self.version}, {dsconfig.describe(self.config)}, "
            f"{len(reference['params'])} optimizer steps on a tiny model"
            + (f", {ranks} data-parallel ranks" if ranks > 1 else "")
            + (f", a pipeline of {stages} stages (train_batch)" if stages else ""))
        for change in self.changes:
            say(f"  config: {change}")
        say()
        shown = self.shown_call()
        results = {label: self._call_result(label, shown) for label in self.results}
        if shown is not None:
            say(f"  {call_shapes.words(shown)}:")
        say(f"  {'run':<17}{'update error vs reference':<28}{'grad norm per step':<28}")
        say(f"  {'reference':<17}{'-':<28}{compare.norms_text(results['reference']['grad_norms']):<28}")
        for label in ("without gradfix", "with gradfix"):
            comparison = self.by_call[shown][label]
            say(f"  {label:<17}{compare.percent_text(comparison.update_errors):<27} "
                f"{compare.norms_text(results[label]['grad_norms']):<27} "
                f"{'matches' if comparison.correct else 'WRONG'}")
        if shown is not None:
            self._write_calls(say)
        for line in compare.evidence_text(self.results["with gradfix"].get("gradfix")):
            say(f"  gradfix: {line}")
        say()
        say(f"Verdict: {self.verdict}")
        say(f"(Update error: distance of the parameters from the plain PyTorch fp32 reference after each "
            f"step, relative to the reference's update; matches when every step is within "
            f"{100 * compare.TOLERANCE[self.precision]:g}% for {self.precision}. "
            + ("One data-parallel rank: data-parallel averaging is not part of this check; --ranks 2 adds it.)"
               if ranks == 1
               else f"The reference averages the {ranks} ranks' micro-batches as data-parallel training does.)"))

    def _write_calls(self, say):
        say()
        say(f"  {'call shape (largest update error)':<62}{'without gradfix':<20}with gradfix")
        for call, runs in self.by_call.items():
            if runs is None:
                say(f"  {call_shapes.words(call):<62}{self.not_run[call]}")
                continue
            cells = [("matches" if c.correct else "WRONG") + f" ({compare.percent_text([c.largest_error])})"
                     for c in (runs["without gradfix"], runs["with gradfix"])]
            say(f"  {call_shapes.words(call):<62}{cells[0]:<20}{cells[1]}")
        wrong = self.wrong_calls("without gradfix")
        if wrong:
            say(f"  wrong without gradfix: {'; '.join(call_shapes.words(call) for call in wrong)}")


def _config(options):
    if options.ds_config:
        config, changes = dsconfig.adapt(dsconfig.load(options.ds_config), options.precision)
    elif options.pipeline_stages:
        config = dsconfig.default_config(stage=1, offload="none", precision=options.precision or "fp32")
        changes = ["ZeRO-1 without offload (the default ZeRO-2 + offload cannot run as a pipeline)"]
    else:
        config, changes = dsconfig.default_config(precision=options.precision or "fp32"), []
    if options.ga is not None:
        if options.ga < 1:
            raise dsconfig.ConfigError(f"--ga must be 1 or more, not {options.ga}")
        config["gradient_accumulation_steps"] = options.ga
        changes.append(f"gradient_accumulation_steps = {options.ga} (--ga)")
    if options.pipeline_stages:
        stage = int((config.get("zero_optimization") or {}).get("stage", 0) or 0)
        if stage > 1:
            raise dsconfig.ConfigError(f"--pipeline-stages needs ZeRO stage 0 or 1 (the config has {stage}): "
                                       "DeepSpeed's pipeline engine refuses ZeRO-2 and ZeRO-3")
        if options.backwards > 1:
            raise dsconfig.ConfigError("--pipeline-stages and --backwards cannot be combined: a pipeline runs "
                                       "gradient_accumulation_steps micro-batches per train_batch()")
    return config, changes


def main(options, out=sys.stdout, err=sys.stderr):
    if options.steps < 1 or options.backwards < 1 or options.ranks < 1 or options.pipeline_stages < 0:
        print("gradfix verify: --steps, --backwards and --ranks must be 1 or more, --pipeline-stages 0 or more",
              file=err)
        return CANNOT_RUN
    try:
        config, changes = _config(options)
    except dsconfig.ConfigError as exc:
        print(f"gradfix verify: {exc}", file=err)
        return CANNOT_RUN
    if not _deepspeed_importable():
        print("gradfix verify: DeepSpeed is not installed in this Python environment "
              f"({sys.executable}); install the release you train with, then run it again.", file=err)
        return CANNOT_RUN
    options.device = _device(options.device)
    started = time.monotonic()
    try:
        outcome = Outcome(config, changes, run_all(config, options))
    except RunFailed as exc:
        print(f"gradfix verify: {exc}", file=err)
        return CANNOT_RUN
    if outcome.code == CANNOT_RUN:
        print(f"gradfix verify: {outcome.verdict}", file=err)
        return CANNOT_RUN
    if options.json:
        print(json.dumps(outcome.to_dict(), indent=2), file=out)
    else:
        outcome.write(out)
        print(f"({time.monotonic() - started:.0f} s)", file=out)
    return outcome.code
