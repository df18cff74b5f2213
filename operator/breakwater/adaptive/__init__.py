"""Thresholds that learn from history: the history ring, the tuner and the replay (all pure).

`history` keeps one upstream's window in fixed buckets, `ingest` turns the sidecars' reports into
additions to it, `tuner` derives thresholds from it, `replay` runs recorded calls through the real
breaker engine with or without the tuner (`breakwater simulate` and bench/adaptive use it), and
`shapes` makes the synthetic histories the tests and docs/adaptive.md plot. Nothing here does I/O or
reads a clock: the operator (`controller/adaptive.py`) passes time and data in.
"""
