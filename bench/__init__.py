"""Benchmarks of taskd: the bridge and the whole system against baselines measured in the same
run, and the worker's packing and searching (`python -m bench`; bench/README.md)."""
