"""Per-token activation scales for an int8 ONNX graph, so that a row's score does not depend on its batch.

ONNX Runtime's ``quantize_dynamic`` puts a ``DynamicQuantizeLinear`` before each integer matmul: it computes
ONE scale and zero point for the whole activation tensor, i.e. for the whole batch, at run time. A row's
int8 codes, and so its probability, then depended on the other rows of its batch and on their padding (the
`make run` model: max |delta p| 0.25 between a row scored alone and inside a batch).
:func:`per_token_activations` rewrites each such node into quantisation per row of the matmul: per token for
``[batch, tokens, features]`` activations (a reduction over the last axis only), per row for ``[batch,
features]``. A token's scale is computed from its own values alone, so neither the other rows nor padding
tokens can reach it, and its codes are the same in any batch.

Symmetric (the default): one activation vector ``x`` (``K`` values) against an int8 weight column ``w``
(per-channel scale ``s_w``, zero point ``z_w``)::

    s = max|x| / 127        q = round(x / s) in [-127, 127]        x . w ~= s * s_w * (q . (w - z_w))

``q`` is stored as ``q + 128`` in uint8 with the constant zero point 128: ONNX Runtime's fast x86 kernels take
uint8 activations and int8 weights, and its ``MatMulIntegerToFloat`` (com.microsoft) accepts a scale per row
of A (``[batch, tokens, 1]``) but only a scalar zero point. That one kernel then does matmul, both scales and
the row and weight scales, as the fused kernel of the per-batch graph did.

Asymmetric (``symmetric=False``, measured and not the default): ``s = (max(0, max x) - min(0, min x)) / 255``
and a zero point per token, as ``DynamicQuantizeLinear`` does per tensor. Finer for one-signed activations,
but no ONNX Runtime kernel takes a per-row zero point, so the matmul runs with zero point 0 and the term
``z * sum_k (w - z_w)`` is subtracted after it in int32, then scaled: four more passes over every output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

ACTIVATIONS = "activations per token"
"""What ``onnx.json`` says of an int8 file written with per-token scales (older files had one per batch)."""
EPSILON = 1e-12
"""Floor of a token's scale: a vector of zeros would otherwise divide by zero (its codes are then all zero
point, which is exact)."""


def _quantize_nodes(x: str, p: str, symmetric: bool, width: int) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Nodes that quantise ``x`` per vector of its last axis: outputs ``{p}_codes`` (uint8), ``{p}_scale``
    (float, last axis 1) and, asymmetric, ``{p}_zp`` (int32); plus the constants they read."""
    from onnx import TensorProto, numpy_helper
    from onnx.helper import make_node as node

    consts = {f"{p}_eps": np.array(EPSILON, np.float32)}
    reduce = [
        node("ReduceMax", [x], [f"{p}_hi"], keepdims=1, axes=[-1]),
        node("ReduceMin", [x], [f"{p}_lo"], keepdims=1, axes=[-1]),
    ]
    if symmetric:
        consts[f"{p}_127"] = np.array(127.0, np.float32)
        consts[f"{p}_2d_shape"] = np.array([-1, width], np.int64)
        consts[f"{p}_1d_shape"] = np.array([-1], np.int64)
        return [
            *reduce,
            node("Neg", [f"{p}_lo"], [f"{p}_neg_lo"]),
            node("Max", [f"{p}_hi", f"{p}_neg_lo"], [f"{p}_absmax"]),
            node("Div", [f"{p}_absmax", f"{p}_127"], [f"{p}_raw_scale"]),
            node("Max", [f"{p}_raw_scale", f"{p}_eps"], [f"{p}_scale"]),
            # One QuantizeLinear per token (axis 0 of the [tokens, width] view, scale and zero point one
            # per token) does divide, round half to even, add 128 and cast in one pass; the elementwise
            # chain doing the same took ~8% of the forward pass. |x| <= max|x|, so no code saturates.
            node("Reshape", [x, f"{p}_2d_shape"], [f"{p}_2d"]),
            node("Reshape", [f"{p}_scale", f"{p}_1d_shape"], [f"{p}_scale_1d"]),
            node("Shape", [f"{p}_scale_1d"], [f"{p}_tokens"]),
            node(
                "ConstantOfShape",
                [f"{p}_tokens"],
                [f"{p}_zp_1d"],
                value=numpy_helper.from_array(np.array([128], np.uint8)),
            ),
            node("QuantizeLinear", [f"{p}_2d", f"{p}_scale_1d", f"{p}_zp_1d"], [f"{p}_codes_2d"], axis=0),
            node("Shape", [x], [f"{p}_shape"]),
            node("Reshape", [f"{p}_codes_2d", f"{p}_shape"], [f"{p}_codes"]),
        ], consts
    consts |= {f"{p}_zero": np.array(0.0, np.float32), f"{p}_255": np.array(255.0, np.float32)}
    return [
        *reduce,
        node("Max", [f"{p}_hi", f"{p}_zero"], [f"{p}_hi0"]),
        node("Min", [f"{p}_lo", f"{p}_zero"], [f"{p}_lo0"]),
        node("Sub", [f"{p}_hi0", f"{p}_lo0"], [f"{p}_range"]),
        node("Div", [f"{p}_range", f"{p}_255"], [f"{p}_raw_scale"]),
        node("Max", [f"{p}_raw_scale", f"{p}_eps"], [f"{p}_scale"]),
        node("Div", [f"{p}_lo0", f"{p}_scale"], [f"{p}_neg_zp"]),
        node("Neg", [f"{p}_neg_zp"], [f"{p}_zp_unrounded"]),
        node("Round", [f"{p}_zp_unrounded"], [f"{p}_zp_float"]),
        node("Cast", [f"{p}_zp_float"], [f"{p}_zp"], to=TensorProto.INT32),
        node("Div", [x, f"{p}_scale"], [f"{p}_scaled"]),
        node("Round", [f"{p}_scaled"], [f"{p}_rounded"]),
        node("Add", [f"{p}_rounded", f"{p}_zp_float"], [f"{p}_shifted"]),
        node("Clip", [f"{p}_shifted", f"{p}_zero", f"{p}_255"], [f"{p}_clipped"]),
        node("Cast", [f"{p}_clipped"], [f"{p}_codes"], to=TensorProto.UINT8),
    ], consts


def per_token_activations(model: Any, *, symmetric: bool | Callable[[str], bool] = True) -> int:
    """Rewrite ``model`` (a ``quantize_dynamic`` output, changed in place) so that every activation that
    feeds an integer matmul is quantised per token (see the module doc); return how many quantisations were
    rewritten.

    Each ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale x weight scale)`` chain is rewritten;
    a ``DynamicQuantizeLinear`` whose outputs reach anything else raises ``ValueError`` (and ``model`` is
    then left as it was: nodes are only swapped once every chain is understood), since a per-batch scale left
    in the graph would bring the batch dependence back. ``symmetric`` may be a function of the activation's
    name (to measure which layers need which scheme).
    """
    from onnx import TensorProto, numpy_helper
    from onnx.helper import make_node, make_opsetid

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            consumers[name].append(n)

    def only(name: str, op: str) -> Any:
        users = consumers[name]
        if len(users) != 1 or users[0].op_type != op:
            raise ValueError(
                f"per-token quantisation: {name} feeds {[u.op_type for u in users]}, not one {op}"
            )
        return users[0]

    replace: dict[int, list[Any]] = {}  # id(old node) -> the nodes written in its place
    removed: set[int] = set()
    consts: dict[str, np.ndarray] = {}
    count = 0
    sym_arg = symmetric
    for dql in [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]:
        symmetric = sym_arg(dql.input[0]) if callable(sym_arg) else sym_arg
        codes, scale, zero = dql.output
        p = dql.name or codes
        width = inits[consumers[codes][0].input[1]].dims[0]
        nodes, new_consts = _quantize_nodes(dql.input[0], p, symmetric, width)
        consts |= new_consts
        replace[id(dql)] = nodes
        for matmul in consumers[codes]:
            if matmul.op_type != "MatMulInteger" or matmul.input[2] != zero:
                raise ValueError(f"per-token quantisation: {codes} feeds {matmul.op_type} {matmul.name}")
            cast = only(matmul.output[0], "Cast")
            mul = only(cast.output[0], "Mul")
            scales = next(i for i in mul.input if i != cast.output[0])
            scales_mul = next(n for n in consumers[scale] if scales in n.output)
            w_scale = next(i for i in scales_mul.input if i != scale)
            w_zero = matmul.input[3] if len(matmul.input) > 3 else ""
            out, name = mul.output[0], matmul.name
            removed.update({id(cast), id(mul), id(scales_mul)})
            if symmetric:
                inputs = [f"{p}_codes", matmul.input[1], f"{p}_scale", w_scale, f"{p}_zp128", w_zero]
                consts[f"{p}_zp128"] = np.array(128, np.uint8)
                # No bias input: with a scale per row, ONNX Runtime 1.32's kernel multiplies the bias by the
                # row's scale too (checked on a 16x8 matmul); the layer's Add stays a node of its own.
                fused = make_node("MatMulIntegerToFloat", inputs, [out], name=name, domain="com.microsoft")
                replace[id(matmul)] = [fused]
                continue
            weight = numpy_helper.to_array(inits[matmul.input[1]]).astype(np.int32)
            w_zp = numpy_helper.to_array(inits[w_zero]).astype(np.int32) if w_zero else 0
            # sum_k (w - z_w) per output column: what a token's zero point adds to each output, in int32.
            consts[f"{name}_colsum"] = (weight - w_zp).sum(axis=0).astype(np.int32)
            replace[id(matmul)] = [
                make_node(
                    "MatMulInteger", [f"{p}_codes", matmul.input[1], "", w_zero], [f"{name}_raw"], name=name
                ),
                make_node("Mul", [f"{p}_zp", f"{name}_colsum"], [f"{name}_zp_term"]),
                make_node("Sub", [f"{name}_raw", f"{name}_zp_term"], [f"{name}_int"]),
                make_node("Cast", [f"{name}_int"], [f"{name}_float"], to=TensorProto.FLOAT),
                make_node("Mul", [f"{p}_scale", w_scale], [f"{name}_scales"]),
                make_node("Mul", [f"{name}_float", f"{name}_scales"], [out]),
            ]
        rest = [
            n.op_type for n in consumers[scale] + consumers[zero] if id(n) not in removed | replace.keys()
        ]
        if rest:
            raise ValueError(f"per-token quantisation: the per-batch scale of {codes} also feeds {rest}")
        count += 1

    written = []
    for n in graph.node:
        if id(n) in replace:
            written.extend(replace[id(n)])  # in the old node's place: inputs computed before, users after
        elif id(n) not in removed:
            written.append(n)
    del graph.node[:]
    graph.node.extend(written)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(make_opsetid("com.microsoft", 1))
    return count
