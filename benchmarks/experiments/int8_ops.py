"""Where the int8 cross-encoder's time goes, by ONNX operator, against what these cores can do (issue 26).

Opens the model dir's ``model.int8.onnx`` (and ``embedder.int8.onnx``) as ``rulebert predict`` does (per-token
activation scales, the same threads and batches), scores ``--rows`` rows of a competition CSV once with ONNX
Runtime's profiler on, and sums node time by operator type: the int8 matrix products (``MatMulInteger``
and the nodes that quantise each token's activations: Reduce, Max, Neg, Div, QuantizeLinear, Mul), attention's
float products, its mask, GELU, LayerNorm, the rest. Then the int8 ceiling of these cores: one
``MatMulInteger`` of a batch's shape (1,024 tokens x 384 x 1,536, the MiniLM FFN) timed alone, in
GOP/s (2 ops per multiply-add), beside what the model's ``MatMulInteger`` nodes reached.

    python -m benchmarks.experiments.int8_ops --model-dir runs/competition/model [--rows 512]
        [--data train.csv]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from rulebert.backend.device import physical_cores
from rulebert.backend.onnx_backend import OnnxEmbedder, _session_source
from rulebert.domain.data import default_data_dir
from rulebert.domain.text import encode_texts
from rulebert.inference.predict import Scorer
from rulebert.model.model_dir import find_embedder

QUANTISE = "per-token activation quantisation (Reduce, Max, Neg, Div, QuantizeLinear, Mul)"
FAMILIES = {
    "MatMulInteger": "int8 matmul (MatMulIntegerToFloat)",
    "MatMulIntegerToFloat": "int8 matmul (MatMulIntegerToFloat)",
    **dict.fromkeys(("ReduceMax", "ReduceMin", "Neg", "Max", "Div", "QuantizeLinear", "Mul"), QUANTISE),
    "MatMul": "float matmul (attention scores, context)",
    "FusedMatMul": "float matmul (attention scores, context)",
    "Where": "attention mask (a Where per layer) and its NaN guard",
    "IsNaN": "attention mask (a Where per layer) and its NaN guard",
    "Softmax": "softmax",
    "Gelu": "GELU",
    "BiasGelu": "GELU",
    "LayerNormalization": "LayerNorm (and SkipLayerNorm: the residual Add fused)",
    "SkipLayerNormalization": "LayerNorm (and SkipLayerNorm: the residual Add fused)",
}


def profiled(path: Path, threads: int) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    return ort.InferenceSession(_session_source(path), options, providers=["CPUExecutionProvider"])


def by_family(trace_path: str) -> tuple[dict[str, float], dict[str, float]]:
    events = json.loads(Path(trace_path).read_text())
    families: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event["args"].get("op_name", "?")
        families[FAMILIES.get(op, "other (Add, Transpose, Reshape, ...)")] += event["dur"] / 1e6
        ops[op] += event["dur"] / 1e6
    return dict(families), dict(ops)


def int8_ceiling(threads: int, tokens: int = 1024, k: int = 384, n: int = 1536, repeats: int = 20) -> float:
    """GOP/s of one uint8 x int8 MatMulInteger of (tokens x k) by (k x n), median of ``repeats``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    values = rng.integers(-127, 128, (k, n)).astype(np.int8).tobytes()
    weight = helper.make_tensor("B", TensorProto.INT8, [k, n], values, raw=True)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "ceiling",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [tokens, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [tokens, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), options)
    feed = {"A": rng.integers(0, 256, (tokens, k)).astype(np.uint8)}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 2 * tokens * k * n / float(np.median(times)) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="a competition CSV (default train.csv)")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    frame = pd.read_csv(args.data or default_data_dir() / "train.csv", dtype=str, keep_default_na=False)
    frame = frame.head(args.rows)
    report = {"threads": args.threads, "rows": len(frame)}
    embedder_path = find_embedder(args.model_dir)
    for file, path in (
        ("model.int8.onnx", args.model_dir / "model.int8.onnx"),
        ("embedder.int8.onnx", embedder_path),
    ):
        if path is None or not path.is_file():
            continue
        # opened as predict opens it (tokenizer, batches, inputs), then its session swapped for a profiled one
        session = profiled(path, args.threads)
        if file == "model.int8.onnx":
            scorer = Scorer(args.model_dir, threads=args.threads)
            scorer.runtime.session = session
            features = scorer.encode(*(frame[c].tolist() for c in ("body", "rule", "subreddit")))
            run = scorer.runtime.predict
        else:
            embedder = OnnxEmbedder(path, threads=args.threads)
            embedder.backend.session = session
            features = encode_texts(embedder.tokenizer, frame["body"].tolist(), 256)
            run = embedder.embed
        started = time.perf_counter()
        run(features)
        wall = time.perf_counter() - started
        families, ops = by_family(session.end_profiling())
        total = sum(families.values())
        tokens = sum(len(f["input_ids"]) for f in features)
        report[file] = {
            "wall_s": round(wall, 3),
            "tokens": tokens,
            "node_s": round(total, 3),
            "families": {k: round(v / total, 3) for k, v in sorted(families.items(), key=lambda x: -x[1])},
            "ops_s": {k: round(v, 3) for k, v in sorted(ops.items(), key=lambda x: -x[1])[:12]},
        }
        # per layer and token: 4 x hidden^2 (Q, K, V, output) + 2 x hidden x intermediate (FFN) multiply-adds
        config = json.loads((args.model_dir / "config.json").read_text())
        hidden, inner = config["hidden_size"], config["intermediate_size"]
        macs = tokens * config["num_hidden_layers"] * (4 * hidden * hidden + 2 * hidden * inner)
        int8_s = ops.get("MatMulInteger", 0.0) + ops.get("MatMulIntegerToFloat", 0.0)
        if int8_s:
            report[file]["int8_matmul_gops"] = round(2 * macs / int8_s / 1e9, 1)
    report["int8_ceiling_gops"] = round(int8_ceiling(args.threads), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
