"""Benchmarks of the bundles (``python -m tools.bench <bundle>``): a shared harness and one module per bundle."""
