"""LlamaIndex integration of rkllm-py (in progress)."""
