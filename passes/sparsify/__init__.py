"""Initializer sparsification: unstructured and N:M masks and the sparsify-initializers pass."""
