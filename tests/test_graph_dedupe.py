"""The work an exported BERT graph repeats (the attention mask per layer) or never needs (the softmax NaN
guard) is removed before ONNX Runtime opens it (:mod:`rulebert.backend.graph_dedupe`), and no score moves."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from rulebert.backend.export import export_onnx
from rulebert.backend.graph_dedupe import drop_repeated_work
from rulebert.backend.onnx_backend import _session_source
from rulebert.inference.predict import Scorer

WORDS = "buy cheap click the lawyer court movie weather discount river dog".split()
BODIES = [
    " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(n)) for i, n in enumerate([1, 40, 7, 23, 3])
]
RULE = "No advertising: spam and promotional links are not allowed."


@pytest.mark.parametrize("int8", [True, False])
def test_the_mask_is_computed_once_the_guard_is_gone_and_no_score_moves(model_dir, int8):
    path = export_onnx(model_dir, int8=int8)
    exported = onnx.load(str(path))
    before = Counter(node.op_type for node in exported.graph.node)
    assert before["IsNaN"] >= 2 and before["Where"] >= 2 * before["IsNaN"]  # what torch.onnx.export writes
    opened = onnx.load_from_string(_session_source(path))
    after = Counter(node.op_type for node in opened.graph.node)
    assert after["IsNaN"] == 0
    assert after["Where"] < before["Where"] - before["IsNaN"]  # the guards and all but one mask Where
    scorer = Scorer(model_dir, device="cpu")  # opens the rewritten graph
    raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features = scorer.encode(BODIES, [RULE] * len(BODIES))
    padded = scorer.runtime.tokenizer.pad(features, return_tensors="np")  # rows of unlike length: padding
    feed = {n: np.asarray(padded[n], dtype=np.int64) for n in scorer.runtime.input_names}
    exported_logits = raw.run(["logits"], feed)[0]
    opened_logits = scorer.runtime.session.run(["logits"], feed)[0]
    np.testing.assert_array_equal(opened_logits, exported_logits)


def _graph(nodes, outputs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    return helper.make_model(
        helper.make_graph(
            nodes, "g", [x], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_equal_constants_and_nodes_merge_and_a_graph_output_stays():
    two = helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])
    two_again = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    three = helper.make_tensor("u", TensorProto.FLOAT, [1], [3.0])
    nodes = [
        helper.make_node("Constant", [], ["c1"], value=two),
        helper.make_node("Constant", [], ["c2"], value=two_again),  # same value, another name: merged
        helper.make_node("Constant", [], ["c3"], value=three),  # another value: kept
        helper.make_node("Mul", ["x", "c1"], ["a"]),
        helper.make_node("Mul", ["x", "c2"], ["b"]),  # the same as a once c2 is c1: merged
        helper.make_node("Mul", ["x", "c3"], ["c"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
        helper.make_node("Mul", ["x", "c1"], ["z"]),  # the same as a, but a graph output: kept
        helper.make_node("Add", ["y", "c"], ["out"]),
    ]
    model = _graph(nodes, ["out", "z"])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = _run(model, x)
    assert drop_repeated_work(model) == 2
    assert [n.output[0] for n in model.graph.node] == ["c1", "c3", "a", "c", "y", "z", "out"]
    for got, want in zip(_run(model, x), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_nan_guard_of_anything_but_a_softmax_stays():
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    nodes = [
        helper.make_node("Constant", [], ["c0"], value=zero),
        helper.make_node("Log", ["x"], ["p"]),  # log of a negative number is NaN: the guard is needed
        helper.make_node("IsNaN", ["p"], ["bad"]),
        helper.make_node("Where", ["bad", "c0", "p"], ["out"]),
    ]
    model = _graph(nodes, ["out"])
    assert drop_repeated_work(model) == 0
    out = _run(model, -np.ones((2, 3), dtype=np.float32))[0]
    assert not np.isnan(out).any()
