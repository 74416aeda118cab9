"""Benchmarks: throughput, pickup latency, telemetry overhead, memory, peers.

Run ``python -m benchmarks --help``. Speed is measured here, never in timed tests.
"""
