"""Model factory, TTA views, ONNX export and runtime."""
