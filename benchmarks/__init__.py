"""Speed of hfcjax against baselines measured in the same run (python -m benchmarks)."""
