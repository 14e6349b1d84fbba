"""The trainer's one typed configuration, and the only reader of flags, environment and config files.

Every setting is a field of the frozen `SearchConfig`. Each field is readable, in increasing order of
precedence, from a config file (JSON, or TOML on Python >= 3.11: ``--config FILE`` or
``TFSTACK_CONFIG``), from an environment variable named ``TFSTACK_<FIELD>`` (what Kubernetes sets,
e.g. ``TFSTACK_EXPORT_BASE``), and from a CLI flag ``--<field-with-dashes>``. Help text is written once,
in the field's metadata, and drives all three. Unknown file keys and unknown ``TFSTACK_*`` variables
fail with the list of them, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.cluster import GROUP_VARIABLES, INDEXED_JOB_VARIABLES
from trainer.errors import ConfigError

__all__ = [
    "BACKBONES",
    "ENV_PREFIX",
    "HEADS",
    "TUNERS",
    "SearchConfig",
    "add_arguments",
    "from_namespace",
    "load",
]

ENV_PREFIX = "TFSTACK_"
BACKBONES = ("small_cnn", "mobilenet_v2", "efficientnet_b0", "resnet50_v2", "vgg16", "inception_v3")
HEADS = ("gap_dense", "gap_dense_dropout", "flatten_dense_dropout")
TUNERS = ("hyperband", "bayesian", "random")
PRECISIONS = ("auto", "off", "mixed_float16", "mixed_bfloat16")
# Variables that share the prefix but belong to other readers (the cluster resolver, the file option).
_OTHER_VARIABLES = frozenset({*INDEXED_JOB_VARIABLES, *GROUP_VARIABLES, "TFSTACK_CONFIG"})


def _opt(help: str, *, choices: Sequence[str] | None = None, **kwargs: Any) -> Any:
    return field(metadata={"help": help, "choices": tuple(choices) if choices else None}, **kwargs)


@dataclass(frozen=True)
class SearchConfig:
    """Everything `python -m trainer search` can be told. Paths are as given (relative to the CWD)."""

    data: Path | None = _opt(
        "Image folder: one sub-folder per class, or train/ val/ [test/] folders of class sub-folders. "
        "Default: the embedded digits data set (scikit-learn's load_digits as 32x32 PNGs).",
        default=None,
    )
    model_name: str = _opt(
        "Model name: the export goes to <export-base>/<model-name>/<version>/. Default: 'digits' for the embedded "
        "data, else the data folder's name (so a new data set never resumes another one's search).",
        default="",
    )
    export_base: Path = _opt("Base directory of exported models (TF Serving's model base path parent).",
                             default=Path("models"))
    run_dir: Path = _opt("Directory for tuner state, checkpoints, reports and TensorBoard logs "
                         "(<run-dir>/<model-name>/); shared by workers, written by the chief only.",
                         default=Path("runs"))
    backbone: tuple[str, ...] = _opt(
        "keras.applications backbone(s), comma-separated; several are searched over. 'auto' chooses by the "
        "weights: small_cnn when training from scratch (--weights none, and the embedded digits), mobilenet_v2 "
        "with pretrained weights (imagenet or a file); the input size is then chosen from the data's image size.",
        choices=("auto", *BACKBONES), default=("auto",),
    )
    weights: str = _opt("Backbone weights: 'imagenet', 'none' (random init, trains the whole backbone), "
                        "or the path of a local .h5/.weights.h5 file.", default="imagenet")
    image_size: int | None = _opt(
        "Square input size in pixels. Default, per backbone, from the data's median image side: small_cnn 32 "
        "(images up to 40 px) or 64; applications their own size (224, inception_v3 299), or less for small "
        "images (the median side rounded up to 32, at least 96). Each backbone of a search runs at its own size.",
        default=None,
    )
    heads: tuple[str, ...] = _opt("Classification heads to search over, comma-separated.", choices=HEADS,
                                  default=HEADS)
    unfreeze_depths: tuple[float, ...] = _opt(
        "Candidate fine-tuning depths, as fractions of the backbone's weighted layers (convolutions and dense "
        "layers, BatchNormalization not counted) counted from the top: 0 = frozen backbone, 1 = all of it; "
        "comma-separated. Searched only for pretrained keras.applications backbones.",
        default=(0.0, 0.25, 0.5, 1.0),
    )
    tuner: str = _opt("KerasTuner oracle.", choices=TUNERS, default="bayesian")
    max_trials: int = _opt("Trials to run (hyperband ignores it: its brackets set the number of trials).",
                           default=8)
    initial_trials: int | None = _opt(
        "bayesian only: random trials before the Gaussian process proposes the next ones. Default: a third of "
        "max_trials, at least 2 (KerasTuner's own default, 3 x the number of hyperparameters, would make a "
        "small budget all random).",
        default=None,
    )
    epochs: int | None = _opt(
        "Epochs per trial: the head phase plus the fine-tuning phase (hyperband's max epochs). Default: enough "
        "epochs for about 600 optimizer steps, between 10 and 200 (small data sets need more epochs).",
        default=None,
    )
    head_epochs: int = _opt("Epochs of the first phase (frozen backbone, head only) of each trial.", default=4)
    patience: int = _opt("Early-stopping patience: epochs without a lower val_loss before a trial stops (at least "
                         "--patience-steps optimizer steps' worth of epochs).", default=5)
    patience_steps: int = _opt(
        "Early-stopping patience in optimizer steps: a trial waits at least this many steps without a lower "
        "val_loss before it stops, however few steps an epoch has (a 120-image folder has 3; 0 = epochs only).",
        default=150,
    )
    min_steps: int = _opt(
        "Optimizer steps a trial trains before early stopping starts watching val_loss (0 = from the first "
        "epoch): on small folders val_loss first rises while the accuracy still climbs.",
        default=300,
    )
    batch_size: int | None = _opt(
        "Batch size per replica (the global batch is this times the number of replicas). Default: 32, or 16 or 8 "
        "when an epoch at 32 would hold fewer than 8 optimizer steps (a small folder: see docs/trainer.md).",
        default=None,
    )
    scale_learning_rate: bool = _opt("Multiply learning rates by the number of replicas.", default=False)
    val_fraction: float = _opt("Fraction of each class held out for validation (without explicit val/).",
                               default=0.2)
    test_fraction: float = _opt("Fraction of each class held out as a test split the search never sees "
                                "(without explicit test/); accuracy on it is reported at the end.", default=0.1)
    seed: int = _opt("Seed for the split, shuffling, initialisation and the oracle.", default=42)
    strict_data: bool = _opt("Fail on unreadable or non-image files instead of skipping them.", default=False)
    flip: str = _opt("Random flip augmentation. Off by default: a flip silently merges classes that are mirror "
                     "images of each other (arrows, text, '/' vs '\\'); turn it on for natural photos.",
                     choices=("none", "horizontal", "vertical", "horizontal_and_vertical"), default="none")
    rotation: float | None = _opt(
        "Random rotation augmentation, as a fraction of a full turn (0 = off). Default: 0.05, or 0 when the "
        "smallest class has fewer than 25 training images (docs/trainer.md, 'Small folders').", default=None)
    zoom: float | None = _opt(
        "Random zoom augmentation, as a fraction (0 = off). Default: 0.1, or 0 when the smallest class has fewer "
        "than 25 training images.", default=None)
    overwrite: bool = _opt("Start the search afresh instead of resuming the one in the run directory.",
                           default=False)
    metrics_port: int | None = _opt("Port on which the chief serves Prometheus metrics while it searches.",
                                    default=None)
    publish: str = _opt(
        "Publish gate: 'better' publishes the best model only if it loads and serves in a fresh process, beats "
        "chance on the held-out images and is not worse than the version being served (by more than "
        "--publish-tolerance); 'always' skips the comparisons (never the loading check).",
        choices=("better", "always"), default="better",
    )
    publish_tolerance: float = _opt("How much lower a new model's held-out balanced accuracy may be than the "
                                    "served version's and still be published.", default=0.02)
    cache: str = _opt(
        "Where each worker keeps its decoded training and validation images (uint8, H x W x 3 bytes each) "
        "between epochs: 'memory', 'none' (decode every epoch), or a local directory for a disk cache (one "
        "sub-directory per split, shard and data). 'auto': memory when this worker's shards fit in min(32 GiB, "
        "half of the memory available to it, container limits included), else none.",
        default="auto",
    )
    prepare: bool = _opt(
        "Before the first trial, decode and resize every image once into TFRecords on the shared volume "
        "(trainer.prepared; reused by every later search on the same data and size) and train from them; "
        "--no-prepare decodes the image files in every worker.", default=True,
    )
    prepared_dir: Path | None = _opt(
        "Where prepared records and the chief's scan manifests are kept (a volume every worker shares). "
        "Default: <run-dir>/prepared.", default=None,
    )
    prepare_timeout: float = _opt(
        "Seconds a worker waits for the chief's scan manifest and prepared records before it gives up "
        "(exit 4 when the chief never wrote them).", default=3600.0,
    )
    mixed_precision: str = _opt("Mixed precision policy; 'auto' = mixed_bfloat16 on GPUs of compute capability >= 8.0 "
                                "(Ampere, Hopper), else mixed_float16 on GPUs, float32 on CPUs.",
                                choices=PRECISIONS, default="auto")
    xla: bool | None = _opt(
        "Compile training steps with XLA (--xla on, --no-xla off). Default auto: on with GPUs, off on CPUs "
        "(slower there, docs/benchmarks.md); always off for several workers on CPUs (XLA compiles no CPU "
        "collectives). Env TFSTACK_XLA: true, false or auto.", default=None,
    )
    cluster_formation_timeout: float = _opt(
        "Seconds to wait at start-up for every worker to connect (a peer that never starts, e.g. a Pending pod); "
        "then exit with code 4 naming the missing peers.", default=900.0,
    )
    collective_timeout: float = _opt(
        "Seconds a worker may go without training progress (a batch, an evaluation step, a cross-worker check) "
        "before it exits with code 4: a peer is alive but stuck. 0 = never.", default=600.0,
    )
    termination_grace_seconds: float = _opt(
        "Seconds between SIGTERM and SIGKILL (the chart's terminationGracePeriodSeconds): on SIGTERM every worker "
        "saves the trial at one agreed step and exits 4 within this time less 5 s (trainer.preemption).",
        default=30.0,
    )

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("max_trials", "epochs", "head_epochs", "batch_size", "initial_trials"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"Expected {name} >= 1. Received: {name}={getattr(self, name)}")
        for name in ("patience", "patience_steps", "min_steps"):
            if getattr(self, name) < 0:
                problems.append(f"Expected {name} >= 0. Received: {name}={getattr(self, name)}")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"Expected {name} in [0, 1). Received: {name}={getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 0.9:
            problems.append(
                f"Expected val_fraction + test_fraction < 0.9. Received: {self.val_fraction} + {self.test_fraction}"
            )
        if self.image_size is not None and not 8 <= self.image_size <= 1024:
            problems.append(f"Expected image_size in [8, 1024]. Received: image_size={self.image_size}")
        if not self.unfreeze_depths or any(not 0.0 <= depth <= 1.0 for depth in self.unfreeze_depths):
            problems.append(
                "Expected unfreeze_depths as fractions of the backbone in [0, 1] (0 = frozen, 1 = all of its "
                f"weighted layers). Received: unfreeze_depths={self.unfreeze_depths}"
            )
        if not 0.0 <= (self.rotation or 0.0) <= 0.5 or not 0.0 <= (self.zoom or 0.0) < 1.0:
            problems.append(f"Expected rotation in [0, 0.5], zoom in [0, 1). Received: {self.rotation}, {self.zoom}")
        if not self.cluster_formation_timeout > 0:
            problems.append("Expected cluster_formation_timeout > 0. "
                            f"Received: cluster_formation_timeout={self.cluster_formation_timeout}")
        if not self.prepare_timeout > 0:
            problems.append(f"Expected prepare_timeout > 0. Received: prepare_timeout={self.prepare_timeout}")
        if not self.collective_timeout >= 0:
            problems.append(f"Expected collective_timeout >= 0. Received: collective_timeout={self.collective_timeout}")
        if not self.termination_grace_seconds > 0:
            problems.append("Expected termination_grace_seconds > 0. "
                            f"Received: termination_grace_seconds={self.termination_grace_seconds}")
        if not 0.0 <= self.publish_tolerance < 1.0:
            problems.append(f"Expected publish_tolerance in [0, 1). Received: {self.publish_tolerance}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            problems.append(f"Expected metrics_port in [0, 65535]. Received: metrics_port={self.metrics_port}")
        problems.extend(_cache_problems(self.cache))
        if not self.model_name:
            object.__setattr__(self, "model_name", _default_model_name(self.data))
        if any(c in self.model_name for c in "/\\ ") or self.model_name.startswith("."):
            problems.append(
                f"Expected a model name without slashes or spaces. Received: model_name={self.model_name!r}"
            )
        if "auto" in self.backbone and len(self.backbone) > 1:
            problems.append(f"Expected 'auto' alone or named backbones. Received: backbone={','.join(self.backbone)}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def uses_embedded_data(self) -> bool:
        return self.data is None

    @property
    def pretrained(self) -> bool:
        """True when the weights are ImageNet's or a file (not random initialisation)."""
        return self.weights != "none"

    @property
    def backbones(self) -> tuple[str, ...]:
        """The backbones to search, with 'auto' resolved.

        'auto' is small_cnn when training from scratch: keras.applications architectures trained from
        random weights on a few thousand images need far more steps than a search gives them. With
        pretrained weights it is mobilenet_v2 (the embedded digits keep small_cnn: 8x8 scans).
        """
        if self.backbone == ("auto",):
            return ("mobilenet_v2",) if self.pretrained and not self.uses_embedded_data else ("small_cnn",)
        return self.backbone

    @property
    def bayesian_initial_trials(self) -> int:
        """Random trials the bayesian oracle draws before its Gaussian process (see `initial_trials`)."""
        if self.initial_trials is not None:
            return self.initial_trials
        return max(2, self.max_trials // 3)

    @property
    def prepared_store(self) -> Path:
        """Where prepared records and scan manifests live (`prepared_dir`, default <run-dir>/prepared)."""
        return self.prepared_dir if self.prepared_dir is not None else self.run_dir / "prepared"

    @property
    def model_run_dir(self) -> Path:
        return self.run_dir / self.model_name

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly values, for the export metadata and logs."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        return out


CACHE_MODES = ("auto", "memory", "none")


def _cache_problems(cache: str) -> list[str]:
    """Why `cache` is neither a cache mode nor a directory this process can create or write to."""
    if cache in CACHE_MODES:
        return []
    expected = "Expected --cache (TFSTACK_CACHE) to be auto, memory, none or a writable local directory"
    if not cache.strip():
        return [f"{expected}. Received: cache={cache!r}"]
    path = Path(cache)
    if path.exists() and not path.is_dir():
        return [f"{expected}. Received: cache={cache!r} (a file, not a directory)"]
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [f"{expected}. Received: cache={cache!r} ({existing} is not a writable directory)"]
    return []


def _default_model_name(data: Path | None) -> str:
    """'digits' for the embedded data; else the data folder's name as a TF Serving-friendly model name."""
    if data is None:
        return "digits"
    name = re.sub(r"[^a-z0-9_-]+", "-", data.resolve().name.lower()).strip("-.")
    return name or "model"


# --- parsing -------------------------------------------------------------------------------------------------

def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(SearchConfig)}


def _parse_bool(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"Expected {name} to be true or false. Received: {name}={text!r}")


def _parser_for(name: str, type_name: str) -> Callable[[Any], Any]:
    """A function turning a string (env, CLI) or a JSON/TOML value into the field's type."""
    choices = next(f.metadata["choices"] for f in dataclasses.fields(SearchConfig) if f.name == name)

    def check_choice(value: str) -> str:
        if choices and value not in choices:
            raise ConfigError(f"Expected {name} to be one of {', '.join(choices)}. Received: {name}={value!r}")
        return value

    def number(kind: type) -> Callable[[Any], Any]:
        def parse(value: Any) -> Any:
            if isinstance(value, bool) or (isinstance(value, float) and kind is int):
                raise ConfigError(f"Expected {name} to be {kind.__name__}. Received: {name}={value!r}")
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"Expected {name} to be {kind.__name__}. Received: {name}={value!r}") from None
        return parse

    def sequence(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
        def parse(value: Any) -> tuple[Any, ...]:
            items = value.split(",") if isinstance(value, str) else list(value)
            cleaned = [item(v.strip() if isinstance(v, str) else v) for v in items if str(v).strip()]
            if not cleaned:
                raise ConfigError(f"Expected at least one value for {name}. Received: {name}={value!r}")
            return tuple(dict.fromkeys(cleaned))
        return parse

    if type_name == "bool":
        return lambda v: v if isinstance(v, bool) else _parse_bool(str(v), name)
    if type_name == "bool | None":  # None: decided at run time ("auto")
        return lambda v: v if isinstance(v, bool) or v is None else (
            None if str(v).strip().lower() in ("", "auto") else _parse_bool(str(v), name))
    if type_name == "int":
        return number(int)
    if type_name == "int | None":
        return lambda v: None if v in (None, "", "none", "auto") else number(int)(v)
    if type_name == "float":
        return number(float)
    if type_name == "float | None":  # None (also "auto" or ""): the default that depends on the data
        return lambda v: None if v in (None, "", "auto") else number(float)(v)
    if type_name == "Path":
        return lambda v: Path(str(v))
    if type_name == "Path | None":
        return lambda v: None if v in (None, "") else Path(str(v))
    if type_name == "tuple[int, ...]":
        return sequence(number(int))
    if type_name == "tuple[float, ...]":
        return sequence(number(float))
    if type_name == "tuple[str, ...]":
        return sequence(lambda v: check_choice(str(v)))
    return lambda v: check_choice(str(v))


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"Expected a readable config file. Received: {path} ({exc.strerror})") from exc
    try:
        if path.suffix == ".toml":
            if sys.version_info < (3, 11):
                raise ConfigError(f"TOML config files need Python >= 3.11; use JSON. Received: {path}")
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"Expected {path} to be valid {path.suffix.lstrip('.') or 'JSON'}. Received: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Expected {path} to hold a table of settings. Received: {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per field (defaults left as None so that unset flags do not shadow env or file)."""
    parser.add_argument("--config", type=Path, default=None, help="JSON (or TOML) file of settings.")
    for f in dataclasses.fields(SearchConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [env {_env_name(f.name)}]"
        if str(f.type) in ("bool", "bool | None"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def load(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> SearchConfig:
    """Build the config: defaults < file < env < CLI values (those that are not None).

    Raises:
        ConfigError: a value is invalid, or the file / environment holds unknown settings.
    """
    env = dict(os.environ if env is None else env)
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    types = _field_types()
    file = file or (Path(env["TFSTACK_CONFIG"]) if env.get("TFSTACK_CONFIG") else None)

    values: dict[str, Any] = {}
    if file is not None:
        from_file = _read_file(file)
        unknown = sorted(set(from_file) - set(types))
        if unknown:
            raise ConfigError(f"Expected settings among {', '.join(types)}. Received unknown keys in {file}: {unknown}")
        values.update({k: (_parser_for(k, types[k])(v), f"{file}") for k, v in from_file.items()})

    known_env = {_env_name(name): name for name in types}
    unknown_env = sorted(
        n for n in env if n.startswith(ENV_PREFIX) and n not in known_env and n not in _OTHER_VARIABLES
    )
    if unknown_env:
        raise ConfigError(
            f"Expected TFSTACK_* variables among {', '.join(sorted(known_env))}. Received unknown: {unknown_env}"
        )
    values.update({name: (env[var], var) for var, name in known_env.items() if var in env})
    values.update({name: (value, "--" + name.replace("_", "-")) for name, value in cli.items() if name in types})

    parsed: dict[str, Any] = {}
    for name, (value, origin) in values.items():
        try:
            parsed[name] = _parser_for(name, types[name])(value) if isinstance(value, str) else value
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    return SearchConfig(**parsed)


def from_namespace(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> SearchConfig:
    """The config for parsed CLI arguments (see `add_arguments`)."""
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    cli = {k: v for k, v in vars(args).items() if k in names}
    return load(cli, env, getattr(args, "config", None))
