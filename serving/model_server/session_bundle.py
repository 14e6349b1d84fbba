"""Session-style (TF1) SavedModels: loaded and run in a ``tf.compat.v1`` session, as TF Serving does.

TF Serving loads every SavedModel into a session (``tensorflow/cc/saved_model/loader.cc`` LoadSavedModel,
wrapped by ``servables/tensorflow/saved_model_bundle_factory.cc``) and runs a signature by feeding and
fetching the tensor names its SignatureDef lists (``predict_util.cc`` PreProcessPrediction,
``util.cc`` PerformOneShotTensorComputation). ``tf.saved_model.load`` instead re-traces a TF1 graph
into functions, which fails for some Estimator-era exports (upstream's ``saved_model_half_plus_three``:
"Shape must be rank 1 but is rank 0" in its ParseExample). :meth:`SessionBundle.load` is the fallback
the servable uses for such exports: ``tf.compat.v1.saved_model.loader.load`` into a session on a graph
of its own, and one :class:`SessionSignature` per SignatureDef, called with numpy arrays by alias.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

from serving.model_server import tensors

__all__ = ["SessionBundle", "SessionSignature"]

#: SignatureDefs that are not servable signatures (TF2's initializer entry).
_SKIPPED = {"__saved_model_init_op"}

SignatureParts = tuple[str, dict[str, tuple[np.dtype[Any], tf.TensorShape]], tuple[str, ...], "SessionSignature"]


@dataclass(frozen=True)
class SessionSignature:
    """One SignatureDef run in the bundle's session: feeds and fetches by tensor name.

    Runs through a session callable (``Session::MakeCallable``/``RunCallable``, what TF Serving's
    session runs amount to) rather than ``Session.run``: the latter refuses, in Python, a feed whose
    shape differs from the placeholder's, while TF Serving feeds tensors as given and lets the graph
    decide (``{"instances": [1.0, 2.0, 5.0]}`` for an ``x`` of shape ``[-1, 1]`` answers
    ``[3.5, 4.0, 5.5]`` in g3doc/api_rest.md).
    """

    feed_aliases: tuple[str, ...]
    fetch_aliases: tuple[str, ...]
    run: Any  # the session callable: positional feeds in feed_aliases order -> fetches in fetch_aliases order

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once (thread-safe); raises TensorFlow's OpError subclasses, as the TF2 call does."""
        outputs = self.run(*[arrays[alias] for alias in self.feed_aliases])
        return dict(zip(self.fetch_aliases, outputs, strict=True))


class SessionBundle:
    """A SavedModel loaded into its own graph and session (SavedModelBundle)."""

    def __init__(self, session: Any, meta_graph: meta_graph_pb2.MetaGraphDef) -> None:
        self.session = session
        self._meta_graph = meta_graph

    @classmethod
    def load(cls, path: Path, tags: Sequence[str], meta_graph: meta_graph_pb2.MetaGraphDef) -> SessionBundle:
        """Restore the variables and run the init op (raises what TensorFlow raises for a broken export)."""
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        try:
            with graph.as_default():
                tf.compat.v1.saved_model.loader.load(session, list(tags), str(path))
        except Exception:
            session.close()
            raise
        return cls(session, meta_graph)

    def signatures(self) -> dict[str, SignatureParts]:
        """Per signature: (method name, inputs alias -> (dtype, shape), sorted output aliases, callable)."""
        found: dict[str, SignatureParts] = {}
        for name, signature_def in self._meta_graph.signature_def.items():
            if name in _SKIPPED:
                continue
            # The graph's own dtype and shape, which the session checks feeds against: upstream's half_plus_three
            # declares its regress input DT_FLOAT (the placeholder is a string) and writes no tensor_shape.
            graph_tensors = {alias: self.session.graph.get_tensor_by_name(info.name)
                             for alias, info in signature_def.inputs.items()}
            inputs = {alias: (tensors.numpy_dtype(t.dtype.as_datatype_enum), t.shape)
                      for alias, t in graph_tensors.items()}
            feeds, fetches = tuple(sorted(signature_def.inputs)), tuple(sorted(signature_def.outputs))
            options = config_pb2.CallableOptions(
                feed=[signature_def.inputs[a].name for a in feeds],
                fetch=[signature_def.outputs[a].name for a in fetches],
            )
            run = SessionSignature(feeds, fetches, self.session._make_callable_from_options(options))
            found[name] = (signature_def.method_name, inputs, fetches, run)
        return found

    def __del__(self) -> None:  # the session holds the graph's memory until closed
        with contextlib.suppress(Exception):  # at interpreter shutdown there is nothing left to release
            self.session.close()
