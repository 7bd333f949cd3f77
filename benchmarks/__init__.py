"""The benchmark: SQL against numpy and PyTorch on the same weights (`gptsql bench`), and measurement scripts."""
