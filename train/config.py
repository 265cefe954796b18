"""The one typed training config: presets in train/configs, a TOML file, and ``section.key=value``."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

PRESET_DIR = Path(__file__).parent / "configs"


# Models whose activations are images (N, C, H, W): the ones a channels_last layout applies to.
CONVNETS = ("cnn", "resnet18", "resnet50")


class ConfigError(ValueError):
    """Bad config input; the message is one line that names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"{key}: {problem}; {fix}")


@dataclass
class ModelConfig:
    name: Literal["cnn", "resnet18", "resnet50", "gpt"] = "cnn"
    num_classes: int = 10
    in_channels: int = 1
    # gpt only
    vocab_size: int = 256
    seq_len: int = 64
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    dropout: float = 0.0
    # Share the token embedding with the output head, as GPT-2 does (its 124M counts the matrix once).
    tie_embeddings: bool = False


@dataclass
class DataConfig:
    # fake_cached: FakeData-shaped images from a small bank drawn once, cheap enough to feed a GPU.
    dataset: Literal["digits", "fake", "fake_cached", "mnist", "cifar10", "imagefolder", "tokens", "bytes"] = "digits"
    # Folder (mnist, cifar10, imagefolder: train/ and val/ inside) or text file (bytes).
    root: str = ""
    image_size: int = 32
    fake_train_size: int = 2048
    fake_eval_size: int = 256
    num_workers: int = 0
    # Page-locked batches, so the copy to the GPU is asynchronous; auto: on when training on CUDA.
    pin_memory: Literal["auto", "true", "false"] = "auto"


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # The optimizer's fused kernel (the whole update in one kernel per parameter, not one per
    # elementwise op), on CUDA and the CPU alike; auto and true: on.
    fused: Literal["auto", "true", "false"] = "auto"


@dataclass
class TrainLoopConfig:
    max_steps: int = 100
    # The global batch stays fixed whatever the world size: accumulation steps are derived.
    global_batch_size: int = 64
    micro_batch_size: int = 32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    parallel: Literal["auto", "ddp", "fsdp", "none"] = "auto"
    # DDP's gradient all-reduce: one per parameter keeps a resumed run bit-identical on 3 ranks or
    # more (see train.parallel.allreduce_per_parameter), one per bucket is torch's default and
    # faster; auto picks per_parameter only where it matters, above 2 ranks.
    ddp_reduce: Literal["auto", "per_parameter", "bucket"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    # TF32 tensor cores for fp32 matmuls and convolutions on CUDA; the CPU ignores it.
    tf32: bool = True
    # NHWC activations for convnets (cuDNN's tensor-core kernels); auto: on for convnets on CUDA.
    channels_last: Literal["auto", "true", "false"] = "auto"
    # Recompute each transformer block's (or ResNet block's) activations in backward instead of keeping them.
    activation_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 0
    # Debug: append each rank's sample indices per step to {output_dir}/samples/rank{R}.jsonl,
    # so tests can check that a resumed run sees exactly the samples an uninterrupted one does.
    record_samples: bool = False


@dataclass
class CheckpointConfig:
    # Any fsspec URL (s3://bucket/run, file:///x) or local path; empty means {output_dir}/checkpoints.
    dir: str = ""
    # Save every N optimizer steps (0: only at the end); a save at the end of training always happens.
    every: int = 50
    # "auto": resume from the newest committed checkpoint in dir; "never": start at step 0, refusing a
    # dir that holds an earlier run's commits; or a step folder's path.
    resume: str = "auto"
    # Committed checkpoints to keep (0 keeps all); older ones are deleted after each commit.
    keep: int = 3
    # Save in the background: training waits only for the copy into reused buffers; a checkpoint
    # process writes with DCP (train.checkpoint_process) and a thread commits. The final save is
    # synchronous either way.
    async_save: bool = False


@dataclass
class MetricsConfig:
    tensorboard: bool = False
    plot: bool = True


@dataclass
class Config:
    output_dir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> Config:
        t = self.train
        for key, value in (("train.max_steps", t.max_steps), ("train.global_batch_size", t.global_batch_size),
                           ("train.micro_batch_size", t.micro_batch_size), ("train.log_every", t.log_every)):
            if value < 1:
                raise ConfigError(key, f"{value} is less than 1", "use a positive number")
        if t.global_batch_size % t.micro_batch_size:
            raise ConfigError("train.global_batch_size", f"{t.global_batch_size} is not a multiple of "
                              f"train.micro_batch_size={t.micro_batch_size}", "make it one")
        if self.data.dataset in ("mnist", "cifar10", "imagefolder", "bytes") and not self.data.root:
            raise ConfigError("data.root", f"dataset {self.data.dataset} reads local files", "set data.root=PATH")
        c = self.checkpoint
        for key, value in (("checkpoint.every", c.every), ("checkpoint.keep", c.keep)):
            if value < 0:
                raise ConfigError(key, f"{value} is negative", "use 0 or a positive number")
        if c.async_save and 0 < c.keep < 2:
            raise ConfigError("checkpoint.keep", f"{c.keep} leaves no committed checkpoint while an async "
                              "save is in flight", "use checkpoint.keep=2 or more")
        if not c.resume:
            raise ConfigError("checkpoint.resume", "is empty", "use auto, never or a checkpoint folder")
        if t.parallel == "fsdp" and t.precision == "fp16":
            raise ConfigError("train.precision", "fp16 under FSDP needs a sharded GradScaler gangrun does not "
                              "ship", "use train.precision=bf16 or fp32")
        if self.optim.lr <= 0:
            raise ConfigError("optim.lr", f"{self.optim.lr} is not positive", "use e.g. optim.lr=1e-3")
        self._validate_gpu_options()
        return self

    def _validate_gpu_options(self) -> None:
        """What check mode can tell without torch; a CUDA-only ``true`` on a CPU that ``auto`` picked is
        refused at run time (train.data.use_pinned_memory)."""
        t, name = self.train, self.model.name
        if self.data.pin_memory == "true" and t.device == "cpu":
            raise ConfigError("data.pin_memory", "true needs a CUDA device and train.device is cpu",
                              "use data.pin_memory=auto or false")
        if t.channels_last == "true" and name not in CONVNETS:
            raise ConfigError("train.channels_last", f"true applies to convnets ({', '.join(CONVNETS)}), not "
                              f"model.name={name}", "use train.channels_last=auto or false")
        if t.activation_checkpointing and name == "cnn":
            raise ConfigError("train.activation_checkpointing", "model cnn has no blocks to checkpoint",
                              "use it with model.name=gpt, resnet18 or resnet50, or set it to false")

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or f"{self.output_dir.rstrip('/')}/checkpoints"

    def to_toml(self) -> str:
        return tomli_w.dumps(dataclasses.asdict(self))


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(cfg: Config, preset: Config) -> list[str]:
    """``key = value`` lines (TOML values) for every key where ``cfg`` differs from ``preset``."""
    mine, base = _flat(dataclasses.asdict(cfg)), _flat(dataclasses.asdict(preset))
    return [f"{key} = {tomli_w.dumps({'v': value}).partition('=')[2].strip()}"
            for key, value in mine.items() if base.get(key) != value]


def accumulation_steps(cfg: TrainLoopConfig, world_size: int) -> int:
    """Micro-steps per optimizer step on each rank, so the global batch is the same at any world size."""
    per_step = cfg.micro_batch_size * world_size
    if cfg.global_batch_size % per_step:
        raise ConfigError("train.global_batch_size",
                          f"{cfg.global_batch_size} cannot be split into micro-batches of "
                          f"{cfg.micro_batch_size} on {world_size} ranks",
                          f"use a multiple of {per_step} or change train.micro_batch_size")
    return cfg.global_batch_size // per_step


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """A TOML value, or an override's text, as the field's declared type."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        # An auto|true|false key written as a TOML boolean (fused = true) means the word.
        if isinstance(value, bool) and str(value).lower() in choices:
            value = str(value).lower()
        if value not in choices:
            raise ConfigError(key, f"'{value}' is not one of {', '.join(map(str, choices))}", "pick one of those")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(key, f"'{value}' is not a boolean", "use true or false")
    if hint in (int, float):
        kind = "an integer" if hint is int else "a number"
        if isinstance(value, bool) or (hint is int and isinstance(value, float)):
            _bad(key, value, kind)
        if isinstance(value, (int, float)):
            return hint(value)
        try:
            return hint(value) if isinstance(value, str) else _bad(key, value, kind)
        except ValueError:
            _bad(key, value, kind)
    if hint is str:
        if isinstance(value, str):
            return value
        _bad(key, value, "a string")
    raise TypeError(f"{key}: unsupported config type {hint}")


def _bad(key: str, value: Any, kind: str) -> typing.NoReturn:
    raise ConfigError(key, f"'{value}' is not {kind}", f"write {key}=<{kind}>")


def _apply(obj: Any, table: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(sorted(hints))
            where = f" in [{prefix[:-1]}]" if prefix else ""
            raise ConfigError(dotted, "unknown key", f"known keys{where}: {known}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(dotted, "is a section", f"set its keys, e.g. {dotted}.KEY=VALUE")
            _apply(getattr(obj, key), value, f"{dotted}.")
        else:
            setattr(obj, key, _coerce(dotted, hint, value))


def parse_override(text: str) -> tuple[list[str], str]:
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "is not an override", "write section.key=value, e.g. train.max_steps=50")
    return key.split("."), value


def resolve_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError("--config", f"file '{name_or_path}' does not exist", "check the path")
        return path
    preset = PRESET_DIR / f"{name_or_path}.toml"
    if not preset.is_file():
        names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
        raise ConfigError("--config", f"'{name_or_path}' is not a preset or a file", f"use one of: {names}")
    return preset


def load_config(name_or_path: str | None, overrides: list[str]) -> Config:
    """Defaults, then the preset or file, then overrides in order; validated."""
    cfg = Config()
    if name_or_path:
        path = resolve_config_path(name_or_path)
        try:
            _apply(cfg, tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(str(path), f"is not valid TOML ({err})", "fix the syntax") from None
    for text in overrides:
        keys, value = parse_override(text)
        table: dict[str, Any] = {keys[-1]: value}
        for key in reversed(keys[:-1]):
            table = {key: table}
        _apply(cfg, table)
    return cfg.validate()

