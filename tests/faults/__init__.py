"""The fault-injection suite: no job is lost or stuck, and nothing leaks.

Run ``pytest tests/faults -s`` to see the figures each test measures; ``--soak``
runs the longer variants.
"""
