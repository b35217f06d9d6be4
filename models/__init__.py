"""Scripts that build the small real models onnxcomp is tested and demonstrated on."""
