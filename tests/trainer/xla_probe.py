"""Whether a Keras model's traced train step is compiled by XLA: functions marked ``_XlaMustCompile``."""

from __future__ import annotations

import keras


def _traced_functions(function: object, seen: set[int] | None = None) -> list[object]:
    """The tf.functions reachable from `function` through closures (Keras wraps its train tf.function)."""
    seen = set() if seen is None else seen
    if id(function) in seen:
        return []
    seen.add(id(function))
    found = [function] if hasattr(function, "_list_all_concrete_functions") else []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            found += _traced_functions(cell.cell_contents, seen)
        except ValueError:  # an empty cell
            continue
    return found


def xla_clusters(model: keras.Model) -> int:
    """Functions marked for XLA compilation (``_XlaMustCompile``) in the traced train step's graphs."""
    marked = 0
    for function in _traced_functions(model.train_function):
        for concrete in function._list_all_concrete_functions():  # type: ignore[attr-defined]
            graph = concrete.graph.as_graph_def()
            marked += sum(1 for f in graph.library.function if f.attr["_XlaMustCompile"].b)
            marked += int(any(node.attr["_XlaMustCompile"].b for node in graph.node))
    return marked
