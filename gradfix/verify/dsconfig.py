"""The DeepSpeed configuration `gradfix verify` runs: the default one (ZeRO-2, CPU
optimizer offload, GA 4) or the user's JSON made runnable on a tiny model.

What decides whether gradients are accumulated correctly is kept as the user wrote
it (ZeRO stage, offload, accumulation steps, precision, clipping, reduction
settings). What would only make the check slow or impossible is replaced, and
every change is listed so the user sees exactly what was checked.
"""

import copy
import json
import tempfile

DEFAULT_MICRO_BATCH = 2
DEFAULT_GA = 4  # the smallest window that shows the ZeRO-2 offload bug (N >= 3)
DEFAULT_CLIPPING = 1.0  # what transformers' Trainer resolves "auto" to (max_grad_norm)
PRECISIONS = ("fp32", "bf16", "fp16")
MONITORS = ("tensorboard", "wandb", "csv_monitor", "comet", "flops_profiler", "comms_logger")


class ConfigError(ValueError):
    """The user's configuration cannot be read or run; the message says why."""


def default_config(stage=2, offload="cpu", ga=DEFAULT_GA, precision="fp32", clipping=0.0,
                   micro_batch=DEFAULT_MICRO_BATCH, overlap_comm=None, grad_accum_dtype=None):
    zero = {"stage": stage}
    if overlap_comm is not None:
        zero["overlap_comm"] = overlap_comm
    if offload == "nvme":  # ZeRO-1/2 keep optimizer state in CPU memory even then; the path is not used
        zero["offload_optimizer"] = {"device": "nvme", "nvme_path": tempfile.gettempdir()}
    elif offload != "none":
        zero["offload_optimizer"] = {"device": offload}
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": ga,
        "zero_optimization": zero,
        "gradient_clipping": clipping,
    }
    if precision != "fp32":
        config[precision] = {"enabled": True}
    if grad_accum_dtype is not None:  # bf16 + "fp32" + ZeRO-1 selects DeepSpeed's BF16_Optimizer
        config["data_types"] = {"grad_accum_dtype": grad_accum_dtype}
    return finish(config)


def finish(config):
    """Settings every verify run needs: a plain torch optimizer (no op build, and its
    update shows the applied gradient exactly) and no periodic printing."""
    config["zero_force_ds_cpu_optimizer"] = False
    config["zero_allow_untested_optimizer"] = True
    config["steps_per_print"] = 10**9
    return config


def _is_auto(value):
    return isinstance(value, str) and value.strip().lower() == "auto"


def _enabled(section):
    return isinstance(section, dict) and section.get("enabled") not in (False, None, "false", "False")


def load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read the DeepSpeed config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None


def adapt(user_config, precision=None):
    """(runnable config, list of changes in plain words) for a user's DeepSpeed config.
    ``precision`` decides where the config says "auto" (or overrides it)."""
    if not isinstance(user_config, dict):
        raise ConfigError("a DeepSpeed config is a JSON object")
    config = copy.deepcopy(user_config)
    changes = []

    def set_value(key, value, why):
        config[key] = value
        changes.append(f"{key} = {value} ({why})")

    for key in ("optimizer", "scheduler"):
        if key in config:
            del config[key]
            changes.append(f"{key} section dropped (verify uses plain SGD so the applied gradient reads back exactly)")
    for key in MONITORS:
        if config.pop(key, None) is not None:
            changes.append(f"{key} dropped (not needed for the check)")
    for key in ("train_batch_size",):
        if key in config:
            del config[key]
            changes.append(f"{key} dropped (DeepSpeed derives it from the micro-batch and GA on one process)")

    if _is_auto(config.get("train_micro_batch_size_per_gpu", "auto")):
        set_value("train_micro_batch_size_per_gpu", DEFAULT_MICRO_BATCH, "was auto or unset")
    if _is_auto(config.get("gradient_accumulation_steps", "auto")):
        set_value("gradient_accumulation_steps", DEFAULT_GA, "was auto or unset")
    if _is_auto(config.get("gradient_clipping")):
        set_value("gradient_clipping", DEFAULT_CLIPPING, "was auto; Trainer's max_grad_norm default")
    for key, value in (("train_micro_batch_size_per_gpu", 1), ("gradient_accumulation_steps", 1)):
        if not isinstance(config.get(key), int) or config[key] < value:
            raise ConfigError(f"{key} must be a positive integer or \"auto\", not {config.get(key)!r}")

    config_precision = _config_precision(config)
    wanted = precision or (config_precision if config_precision != "auto" else "fp32")
    if precision is None and config_precision == "auto":
        changes.append("precision = fp32 (the config says auto; choose with --precision)")
    for name in ("bf16", "fp16"):
        section = config.get(name)
        if isinstance(section, dict):
            section = {k: v for k, v in section.items() if not _is_auto(v) or k == "enabled"}
            section["enabled"] = name == wanted
            config[name] = section
        elif name == wanted:
            config[name] = {"enabled": True}
    if precision and precision != config_precision:
        changes.append(f"precision = {precision} (--precision)")

    _offload_to_cpu(config, changes)
    _drop_auto(config, "", changes)
    return finish(config), changes


def _config_precision(config):
    for name in ("bf16", "fp16"):
        section = config.get(name)
        if isinstance(section, dict) and _is_auto(section.get("enabled")):
            return "auto"
        if _enabled(section):
            return name
    return "fp32"


def _offload_to_cpu(config, changes):
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict):
        return
    for key in ("offload_optimizer", "offload_param"):
        section = zero.get(key)
        if isinstance(section, dict) and section.get("device") == "nvme":
            zero[key] = {k: v for k, v in section.items() if k not in ("nvme_path", "buffer_count")}
            zero[key]["device"] = "cpu"
            changes.append(f"zero_optimization.{key}.device = cpu (was nvme; ZeRO stage 1/2 "
                           "accumulate the same way for both, and no NVMe path is needed)")


def _drop_auto(section, prefix, changes):
    """Remaining "auto" values (bucket sizes and the like) fall back to DeepSpeed's defaults."""
    for key in list(section):
        value = section[key]
        if isinstance(value, dict):
            _drop_auto(value, f"{prefix}{key}.", changes)
        elif _is_auto(value):
            del section[key]
            changes.append(f"{prefix}{key}: auto -> DeepSpeed's default")


def precision_of(config):
    precision = _config_precision(config)
    return "fp32" if precision == "auto" else precision


def describe(config):
    """One line: what this configuration does to gradient accumulation."""
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero, dict) else 0
    offload = (zero.get("offload_optimizer") or {}).get("device", "none") if isinstance(zero, dict) else "none"
    parts = [f"ZeRO-{stage}", f"offload_optimizer={offload or 'none'}",
             f"GA {config['gradient_accumulation_steps']}", f"micro-batch {config['train_micro_batch_size_per_gpu']}",
             precision_of(config)]
    accumulation = (config.get("data_types") or {}).get("grad_accum_dtype")
    if accumulation:
        parts.append(f"grad_accum_dtype {accumulation}")
    if config.get("gradient_clipping"):
        parts.append(f"clipping {config['gradient_clipping']}")
    return ", ".join(parts)
