"""LangChain integration of rkllm-py: chat model, LLM, embeddings and reranker on an RKLLM model.

Example:
    >>> from langchain_rkllm import ChatRKLLM
    >>> ChatRKLLM.__name__
    'ChatRKLLM'
"""

from langchain_rkllm.chat_models import ChatRKLLM

__all__ = ["ChatRKLLM"]
