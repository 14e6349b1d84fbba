"""What a server says about a model: signatures (metadata) and version states, as plain dataclasses.

Both transports turn their answers (protobuf messages or TF Serving's JSON) into these, through the
same ``SignatureDefMap``/``GetModelStatusResponse`` messages, so the public API never shows protos.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy and protobuf are imported where used: keeps ``import serving.client`` light
    import numpy as np

    from serving.wire.proto import get_model_metadata_pb2, get_model_status_pb2

__all__ = [
    "ModelMetadata",
    "ModelStatus",
    "Signature",
    "TensorSpec",
    "VersionStatus",
    "metadata_from_proto",
    "status_from_proto",
]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature."""

    name: str
    """The alias used in requests and responses (the signature's map key)."""
    dtype: str
    """TensorFlow dtype name, e.g. ``DT_FLOAT``."""
    shape: tuple[int | None, ...] | None
    """Dimensions, ``None`` where any size is accepted; ``None`` for an unknown rank."""
    tensor_name: str = ""
    """The graph tensor behind the alias."""

    @property
    def numpy_dtype(self) -> np.dtype[Any] | None:
        """The numpy dtype the codec uses for this spec, or None for dtypes it cannot carry."""
        from serving.wire.codec import dtype_for_enum

        try:
            return dtype_for_enum(self.dtype).numpy
        except ValueError:
            return None


@dataclass(frozen=True)
class Signature:
    """A SignatureDef: named inputs and outputs of one served function."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    method_name: str = ""


@dataclass(frozen=True)
class ModelMetadata:
    """GetModelMetadata's answer: the model, the version that answered, and its signatures."""

    model: str
    version: int | None
    signatures: Mapping[str, Signature] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionStatus:
    """One version's state: START, LOADING, AVAILABLE, UNLOADING or END (plus any load error)."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True)
class ModelStatus:
    """GetModelStatus's answer."""

    model: str
    versions: tuple[VersionStatus, ...]

    @property
    def ready(self) -> bool:
        """True when some version is AVAILABLE (TF Serving answers 200 while still LOADING)."""
        return any(v.state == "AVAILABLE" for v in self.versions)

    @property
    def available_versions(self) -> tuple[int, ...]:
        return tuple(sorted(v.version for v in self.versions if v.state == "AVAILABLE"))

    def __str__(self) -> str:
        states = ", ".join(f"v{v.version}={v.state}" for v in self.versions) or "no versions"
        return f"{self.model}: {states}"


def _spec(alias: str, info: Any) -> TensorSpec:
    from serving.wire.proto import types_pb2

    shape: tuple[int | None, ...] | None
    if info.tensor_shape.unknown_rank or not info.HasField("tensor_shape"):
        shape = None
    else:
        shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(alias, types_pb2.DataType.Name(info.dtype), shape, info.name)


def metadata_from_proto(
    model: str, version: int | None, signature_map: get_model_metadata_pb2.SignatureDefMap
) -> ModelMetadata:
    """Builds :class:`ModelMetadata` from a ``SignatureDefMap``."""
    signatures = {
        name: Signature(
            name,
            {alias: _spec(alias, info) for alias, info in sorted(sig.inputs.items())},
            {alias: _spec(alias, info) for alias, info in sorted(sig.outputs.items())},
            sig.method_name,
        )
        for name, sig in sorted(signature_map.signature_def.items())
    }
    return ModelMetadata(model, version, signatures)


def status_from_proto(model: str, response: get_model_status_pb2.GetModelStatusResponse) -> ModelStatus:
    """Builds :class:`ModelStatus` from a ``GetModelStatusResponse``."""
    from serving.wire.proto import error_codes_pb2, get_model_status_pb2

    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    versions = tuple(
        VersionStatus(
            int(s.version),
            state_name(s.state),
            error_codes_pb2.Code.Name(s.status.error_code),
            s.status.error_message,
        )
        for s in response.model_version_status
    )
    return ModelStatus(model, versions)
