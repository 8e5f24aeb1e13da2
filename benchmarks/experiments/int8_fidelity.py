"""How closely int8 variants of a trained model dir's classifier follow its torch (fp32) scores, and how fast
they run: the check ``rulebert train`` applies (Spearman >= 0.99 with torch) on a wider model.

Variants: dynamic int8 per channel on every MatMul (the default), the same leaving the feed-forward output
projections in fp32 (``ffn-out-fp32``: the matmul whose inputs carry the largest outliers after GELU), and
leaving every feed-forward projection in fp32 (``ffn-fp32``). Rows: the first N comments of a test file,
paired with their rule.

    python -m benchmarks.experiments.int8_fidelity --model-dir DIR --test test.csv [--rows 300]
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

from rulebert.backend.export import int8_variant_file
from rulebert.backend.onnx_backend import OnnxBackend
from rulebert.backend.torch_backend import TorchBackend
from rulebert.domain.text import encode_frame
from rulebert.model.model_dir import load_model_dir

VARIANTS = {"all-int8": (), "ffn-out-fp32": ("ffn-out",), "ffn-fp32": ("ffn-out", "ffn-in")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=300)
    args = parser.parse_args()
    model, tokenizer, config, _ = load_model_dir(args.model_dir)
    frame = pd.read_csv(args.test, dtype=str, keep_default_na=False).head(args.rows)
    features = encode_frame(tokenizer, frame.rename(columns={"body": "text"}), config)
    started = time.perf_counter()
    reference = TorchBackend(model, tokenizer, "cpu").predict(features)
    results = {"torch_seconds": round(time.perf_counter() - started, 1), "rows": len(features)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, keep_fp32 in VARIANTS.items():
            path = Path(tmp) / f"{name}.onnx"
            int8_variant_file(model, tokenizer, path, keep_fp32=keep_fp32)
            backend = OnnxBackend(path, tokenizer=tokenizer)
            started = time.perf_counter()
            scores = backend.predict(features)
            seconds = time.perf_counter() - started
            results[name] = {
                "spearman": round(float(spearmanr(reference, scores).statistic), 5),
                "mean_abs_delta_p": round(float(np.abs(reference - scores).mean()), 5),
                "rows_per_s": round(len(features) / seconds, 1),
                "mb": round(path.stat().st_size / 2**20),
            }
            print(name, results[name], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
