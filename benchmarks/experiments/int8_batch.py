"""Whether a row's int8 score depends on its batch, and what removing that dependence costs (issue 26).

Three int8 files of a trained model dir's classifier, all with the same per-channel int8 weights: activation
scales per token, symmetric (what the export writes), per token with a zero point each, and one per batch
(ONNX Runtime's ``quantize_dynamic`` as it is; the export before issue 26). For each: rows/s (interleaved
repeats of ``OnnxBackend.predict``, the median; the CPU seconds of this process too, steadier than wall
time when other jobs share the cores), its scores against torch's (Spearman, |delta p|, column-averaged
AUC) and the largest |delta p| between a row scored alone (one row per call) and inside the default
batches. Rows: labelled rows of a train.csv from ``--skip`` on (keep them off the rows the model was
trained on).

    python -m benchmarks.experiments.int8_batch --model-dir DIR --data train.csv [--rows 500] [--skip 1500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from rulebert.backend.export import ACTIVATION_MODES, int8_variant_file
from rulebert.backend.onnx_backend import OnnxBackend
from rulebert.backend.torch_backend import TorchBackend
from rulebert.domain.metrics import column_averaged_auc
from rulebert.domain.text import encode_frame
from rulebert.model.model_dir import load_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a labelled train.csv")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--skip", type=int, default=0, help="rows of --data to leave out first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: cores)")
    args = parser.parse_args()
    model, tokenizer, config, _ = load_model_dir(args.model_dir)
    frame = pd.read_csv(args.data, keep_default_na=False).iloc[args.skip : args.skip + args.rows]
    features = encode_frame(tokenizer, frame.rename(columns={"body": "text"}), config)
    labels, rules = frame["rule_violation"].to_numpy(), frame["rule"].to_numpy()
    reference = TorchBackend(model, tokenizer, "cpu").predict(features)
    auc_torch = column_averaged_auc(labels, reference, rules)[0]
    results: dict = {"rows": len(features), "col_auc_torch": round(auc_torch, 5)}
    with tempfile.TemporaryDirectory() as tmp:
        backends = {}
        for mode in ACTIVATION_MODES:
            path = int8_variant_file(model, tokenizer, Path(tmp) / f"{mode}.onnx", activations=mode)
            backends[mode] = OnnxBackend(path, tokenizer=tokenizer, threads=args.threads)
            backends[mode].predict(features[:32])  # warm-up: first-call allocations out of the timing
        wall = {mode: [] for mode in backends}
        cpu = {mode: [] for mode in backends}
        scores = {}
        for _ in range(args.repeats):  # interleaved: a change in the machine's load hits every variant
            for mode, backend in backends.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                scores[mode] = backend.predict(features)
                wall[mode].append(time.perf_counter() - started)
                cpu[mode].append(time.process_time() - cpu_started)
        for mode, backend in backends.items():
            alone = np.array([backend.predict([f])[0] for f in features])
            delta = np.abs(scores[mode] - reference)
            results[mode] = {
                "rows_per_s": round(len(features) / float(np.median(wall[mode])), 1),
                "rows_per_cpu_s": round(len(features) / float(np.median(cpu[mode])), 1),
                "spearman": round(float(spearmanr(reference, scores[mode]).statistic), 5),
                "abs_delta_p_mean": round(float(delta.mean()), 5),
                "abs_delta_p_p99": round(float(np.percentile(delta, 99)), 5),
                "alone_vs_batched_max": round(float(np.abs(alone - scores[mode]).max()), 6),
                "col_auc": round(column_averaged_auc(labels, scores[mode], rules)[0], 5),
            }
            print(mode, results[mode], flush=True)
    for mode in ACTIVATION_MODES[:2]:  # speed against per-batch: the median of the paired repeats' ratios
        for key, times in (("speed_vs_per_batch", wall), ("cpu_speed_vs_per_batch", cpu)):
            ratios = np.array(times["per-batch"]) / np.array(times[mode])
            results[mode][key] = round(float(np.median(ratios)), 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
