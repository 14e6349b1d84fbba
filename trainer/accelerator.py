"""What this process trains on: dtype policy, collectives, memory growth and XLA, from the visible devices.

`choose_accelerator` is a pure function of the device list (unit-tested against simulated devices);
`apply` acts on the choice before the strategy exists. Under a mixed policy the model's last layer
stays float32 (the hypermodel builds its ``logits`` Dense with ``dtype="float32"``), and the policy
itself is applied where each model is built (`trainer.hypermodel.build_model`), because
``keras.backend.clear_session()`` resets a global one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from trainer.errors import ConfigError

__all__ = [
    "BFLOAT16_CAPABILITY",
    "MIXED_PRECISION_CHOICES",
    "Accelerator",
    "apply",
    "choose_accelerator",
    "gpu_capability",
    "xla_blockers",
    "xla_on",
]

log = logging.getLogger(__name__)

MIXED_PRECISION_CHOICES = ("auto", "off", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """What this process trains on and how: the result of `choose_accelerator`."""

    kind: str
    """``"gpu"`` or ``"cpu"``."""
    devices: int
    """Number of local GPUs (0 on CPU)."""
    policy: str
    """Keras dtype policy: ``float32``, ``mixed_float16`` or ``mixed_bfloat16``."""
    communication: str
    """Collective implementation for MWMS: ``NCCL`` (GPUs) or ``RING`` (CPUs)."""
    memory_growth: bool
    """Allocate GPU memory on demand instead of all of it up front."""
    jit_compile: bool
    """Compile train steps with XLA (pass to ``model.compile(jit_compile=...)``)."""

    def describe(self) -> str:
        """One log line."""
        where = f"{self.devices} GPU(s)" if self.kind == "gpu" else "CPU"
        growth = ", memory growth" if self.memory_growth else ""
        # Asked for, not yet on: the model decides (trainer.search_space.model_spec logs whether it compiles).
        xla = "requested" if self.jit_compile else "off"
        return f"{where}: policy {self.policy}, {self.communication} all-reduce, XLA {xla}{growth}"


def _device_type(device: Any) -> str:
    kind = getattr(device, "device_type", device)
    return str(kind).upper()


BFLOAT16_CAPABILITY = (8, 0)
"""CUDA compute capability from which GPUs compute in bfloat16 on tensor cores (Ampere, Hopper, ...)."""


def gpu_capability(device: Any) -> tuple[int, int] | None:
    """The CUDA compute capability of a physical GPU (``tf.config.experimental.get_device_details``), or None."""
    try:
        capability = tf.config.experimental.get_device_details(device).get("compute_capability")
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return None  # not a PhysicalDevice (a simulated one in tests), or a GPU without details (ROCm)
    return (int(capability[0]), int(capability[1])) if capability else None


def choose_accelerator(
    devices: Sequence[Any], *, mixed_precision: str | None = "auto", xla: bool | None = None,
    capabilities: Sequence[tuple[int, int] | None] | None = None,
) -> Accelerator:
    """Pick dtype policy, collectives and memory settings for the visible `devices`.

    Args:
        devices: the visible physical devices (``tf.config.list_physical_devices()``), or anything
            with a ``device_type`` attribute, or plain type strings such as ``"GPU"``.
        mixed_precision: ``"auto"`` (or None): on GPUs ``mixed_bfloat16`` when every GPU has compute
            capability >= 8.0 (no loss scaling needed), else ``mixed_float16`` (loss scaling agreed across
            replicas, `trainer.loss_scale`); ``float32`` on CPUs. ``"off"``: always float32;
            ``"mixed_float16"`` / ``"mixed_bfloat16"``: that policy.
        xla: compile train steps with XLA; None ("auto"): on GPUs yes, on CPUs no (measured slower,
            docs/benchmarks.md). Whether the model then compiles is `xla_blockers`'s question.
        capabilities: the GPUs' compute capabilities (default: read with `gpu_capability`; unknown counts
            as below 8.0).

    Raises:
        ConfigError: `mixed_precision` is not one of `MIXED_PRECISION_CHOICES`.
    """
    choice = "auto" if mixed_precision is None else mixed_precision
    if choice not in MIXED_PRECISION_CHOICES:
        raise ConfigError(
            f"Expected mixed_precision in {list(MIXED_PRECISION_CHOICES)}. Received: mixed_precision={choice!r}"
        )
    gpus = sum(1 for device in devices if _device_type(device) == "GPU")
    if gpus:
        policy = choice
        if choice == "auto":
            if capabilities is None:
                capabilities = [gpu_capability(d) for d in devices if _device_type(d) == "GPU"]
            bf16 = bool(capabilities) and all(c is not None and c >= BFLOAT16_CAPABILITY for c in capabilities)
            policy = "mixed_bfloat16" if bf16 else "mixed_float16"
        return Accelerator("gpu", gpus, "float32" if policy == "off" else policy, "NCCL", True,
                           True if xla is None else bool(xla))
    policy = "float32" if choice in ("auto", "off") else choice
    return Accelerator("cpu", 0, policy, "RING", False, bool(xla))


def xla_blockers(accelerator: Accelerator, workers: int) -> list[str]:
    """Why a train step cannot compile with XLA here (empty: it can).

    Under MultiWorkerMirroredStrategy the step holds the gradient (and synchronized BatchNormalization)
    all-reduces; XLA compiles collectives only for NCCL/auto communication, and on CPU devices not at
    all (TF 2.21: "Only compiling NCCL/auto collective is supported, got: ring"; with AUTO:
    "Collectives are not yet implemented for CPU devices when compiling with XLA", b/194942685;
    tests/trainer/test_distribute.py runs two workers). Every backbone of the search space and the
    augmentation (`trainer.affine`) compile (docs/distributed.md lists the check).
    """
    if workers > 1 and accelerator.kind == "cpu":
        return ["XLA compiles no collectives on CPU devices (MultiWorkerMirroredStrategy with RING all-reduce)"]
    return []


def xla_on(accelerator: Accelerator, workers: int) -> bool:
    """Whether train steps compile with XLA: requested (``accelerator.jit_compile``) and not blocked
    (`xla_blockers`); a request that is blocked is logged as a warning naming why."""
    blockers = xla_blockers(accelerator, workers)
    if accelerator.jit_compile and blockers:
        log.warning("XLA off although requested: %s", "; ".join(blockers))
    return accelerator.jit_compile and not blockers


def apply(accelerator: Accelerator, devices: Sequence[Any] | None = None) -> None:
    """Set GPU memory growth.

    XLA is decided per model (``model.compile(jit_compile=...)``, `xla_blockers`), not by TensorFlow's
    global auto-clustering (``tf.config.optimizer.set_jit``): a step logged as not compiled is not partly
    clustered behind the log's back.

    The dtype policy is not set globally here: ``keras.backend.clear_session()`` would reset it.
    It travels in ``ModelSpec.dtype_policy`` and is applied where each model is built
    (`trainer.hypermodel.build_model`). Call it before the strategy is created and before any tensor
    is made: TensorFlow refuses to change memory growth once the GPUs are initialized (logged, not
    raised).
    """
    if accelerator.memory_growth:
        gpus = [d for d in (devices if devices is not None else tf.config.list_physical_devices("GPU"))
                if _device_type(d) == "GPU"]
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not turn on memory growth for %s: %s", getattr(gpu, "name", gpu), exc)
    log.info("accelerator: %s", accelerator.describe())
