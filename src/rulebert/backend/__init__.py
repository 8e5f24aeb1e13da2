"""Where and how a model runs: device and precision, batching, the torch and ONNX Runtime backends, and ONNX
export."""
