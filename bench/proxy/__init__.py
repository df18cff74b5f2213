"""Helpers of the proxy benchmark (`bench/proxy_bench.py`): peers, load generation, reporting."""
