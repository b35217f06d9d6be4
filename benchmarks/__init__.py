"""On-demand benchmarks that compare onnxcomp with peer tools in the same run.

Each `bench_*.py` module has `main(argv: list[str]) -> int` and prints one table.
Run all with `python -m benchmarks`, one with `python -m benchmarks quantize`
(or `python -m benchmarks.bench_quantize`).
"""
