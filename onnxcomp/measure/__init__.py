"""The measuring floor: ONNX Runtime sessions, sample data, comparisons, counts. Knows no technique."""
