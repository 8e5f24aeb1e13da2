"""Work an exported BERT graph does several times, or for nothing, removed before ONNX Runtime opens it.

``torch.onnx.export`` of a transformers BERT writes, in every layer, the attention mask's
``Where(mask, 0, -inf)`` again (the same mask, each layer with its own copy of the constants 0 and -inf, so
ONNX Runtime's own common-subexpression pass, which compares inputs by name, keeps all six), and after each
softmax a guard ``Where(IsNaN(p), 0, p)`` for a row whose keys are all masked. Measured with ONNX Runtime's
profiler on the `make run` model's int8 file (``benchmarks/experiments/int8_ops.py``): the two took 10% of
the forward's operator time. :func:`drop_repeated_work`:

- merges nodes that compute the same thing: same operator, same attributes, same inputs (a ``Constant``
  is the same as another of the same value), so the mask is computed once and shared by the six layers;
- drops the softmax NaN guard: a softmax row is NaN only when every key is masked, and a rulebert input
  always has its ``[CLS]`` token unmasked (the tokenizer adds it, the attention mask is 1 there), so the
  guard returns its input unchanged for every row it can meet;
- then removes nodes whose outputs nothing reads.

Every kept node computes what it did, so scores are unchanged (tested against the graph as exported).
"""

from __future__ import annotations

from typing import Any

NONDETERMINISTIC = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial")


def _node_key(node: Any) -> tuple | None:
    """What a node computes: two nodes with one key give the same outputs. None: never merged."""
    if node.op_type in NONDETERMINISTIC:
        return None
    if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
        from onnx import numpy_helper

        array = numpy_helper.to_array(node.attribute[0].t)  # by value: the tensor's own name differs
        return ("Constant", array.dtype.str, array.shape, array.tobytes())
    attributes = tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute))
    return (node.domain, node.op_type, tuple(node.input), attributes)


def _nan_guard_source(node: Any, producers: dict[str, Any], constants: dict[str, float]) -> str | None:
    """For ``Where(IsNaN(p), 0, p)`` with ``p`` a Softmax output: ``p``; else None."""
    if node.op_type != "Where" or len(node.input) != 3:
        return None
    condition, zero, value = node.input
    test = producers.get(condition)
    source = producers.get(value)
    if test is None or test.op_type != "IsNaN" or list(test.input) != [value]:
        return None
    if source is None or source.op_type != "Softmax" or constants.get(zero) != 0.0:
        return None
    return value


def _scalar_constants(graph: Any) -> dict[str, float]:
    from onnx import numpy_helper

    out: dict[str, float] = {}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
            if array.size == 1:
                out[node.output[0]] = float(array.ravel()[0])
    for tensor in graph.initializer:
        if len(tensor.dims) <= 1 and (not tensor.dims or tensor.dims[0] == 1):
            out[tensor.name] = float(numpy_helper.to_array(tensor).ravel()[0])
    return out


def drop_repeated_work(model: Any) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``, in place) as described above; returns the number of nodes
    removed (0: nothing to do)."""
    graph = model.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for node in graph.node for a in node.attribute):
        return 0  # control flow: its subgraphs read outer names; left as it is
    outputs = {o.name for o in graph.output}
    constants = _scalar_constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    rename: dict[str, str] = {}
    seen: dict[tuple, Any] = {}
    kept = []
    for node in graph.node:  # topological order: a node's inputs are renamed before it is looked at
        node.input[:] = [rename.get(name, name) for name in node.input]
        if not (set(node.output) & outputs):
            guarded = _nan_guard_source(node, producers, constants)
            if guarded is not None:
                rename[node.output[0]] = guarded
                continue
            key = _node_key(node)
            if key is not None and key in seen and len(seen[key].output) == len(node.output):
                rename.update(zip(node.output, seen[key].output, strict=True))
                continue
            if key is not None:
                seen[key] = node
        kept.append(node)
    # nodes nothing reads any more (the IsNaN of a dropped guard, merged constants' producers)
    while True:
        read = outputs | {name for node in kept for name in node.input}
        live = [node for node in kept if any(out in read for out in node.output)]
        if len(live) == len(kept):
            break
        kept = live
    removed = len(graph.node) - len(kept)
    if removed:
        del graph.node[:]
        graph.node.extend(kept)
    return removed
