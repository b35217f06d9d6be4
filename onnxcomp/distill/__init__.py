"""Knowledge distillation sidecar (PyTorch); imported only by the distill command."""
