"""Wire-compatible protocol definitions for TF Serving, generated into a private descriptor pool.

The ``.proto`` files here declare the TF Serving and TensorFlow messages and services that the client,
the model server and the trainer's export use, with upstream's package names, message names and field
numbers, so the bytes on the wire are the same. The generated ``*_pb2`` modules register into
:data:`POOL`, not protobuf's default pool: TensorFlow registers ``tensorflow.TensorProto`` and friends
there, and a second definition of the same full name would be refused, so this package and real
TensorFlow can live in one process.

Regenerate with ``python -m serving.wire.proto.regenerate`` (needs grpcio-tools).
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

__all__ = ["POOL"]

POOL = descriptor_pool.DescriptorPool()
POOL.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
POOL.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
