"""Calibration: streaming, mergeable activation statistics and range selection.

    stats = collect_stats(model, data)              # one ONNX Runtime pass over the data, O(1) memory in samples
    stats = stats_a.merge(stats_b)                  # exact: two halves merged == the whole
    stats.save("calib.stats.npz"); CalibrationStats.load(...)
    ranges = choose_ranges(stats, method="entropy", symmetric=True)   # name -> TensorRange

Methods: minmax, percentile, entropy (TensorRT KL), mse, auto (lowest expected error per tensor).
"""

from onnxcomp.passes.qdq.calibration.collect import (
    activation_tensors,
    collect_stats,
    value_sources,
)
from onnxcomp.passes.qdq.calibration.histogram import EXTREME, TensorStats
from onnxcomp.passes.qdq.calibration.ranges import (
    METHODS,
    TensorRange,
    choose_ranges,
    tensor_range,
)
from onnxcomp.passes.qdq.calibration.stats import CalibrationStats
from onnxcomp.passes.qdq.numerics import (
    fake_quantize,
    qrange,
    representable,
    scale_zero_point,
    sqnr_db,
)

__all__ = [
    "CalibrationStats", "EXTREME", "METHODS", "TensorRange", "TensorStats", "activation_tensors",
    "choose_ranges", "collect_stats", "fake_quantize", "qrange", "representable", "scale_zero_point",
    "sqnr_db", "tensor_range", "value_sources",
]
