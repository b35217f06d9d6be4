"""Low-rank factorization: MatMul/Gemm weights as two thin factors, Conv as a kxk conv to r channels and a 1x1 conv."""
