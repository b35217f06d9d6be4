"""Static INT8 quantization: QDQ placement per target and the insert-qdq pass."""
