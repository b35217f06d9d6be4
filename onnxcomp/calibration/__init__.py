"""Calibration: streaming, mergeable activation statistics and range selection (minmax, percentile, entropy, mse)."""
