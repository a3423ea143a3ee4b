"""Benchmarks of rkllm-py against the runtime itself and the usual Python pattern.

Scripts, not tests: ``python -m benchmarks`` (``--suite NAME``, ``--quick``) writes JSON, a
markdown table and PNG plots into ``benchmarks/results/``. See docs/performance.md.
"""
