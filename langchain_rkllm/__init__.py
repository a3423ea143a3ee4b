"""LangChain integration of rkllm-py: chat model, LLM, embeddings and reranker on an RKLLM model.

Every class loads its model through :func:`rkllm_core.shared.shared_model`, so a chat model,
an LLM and embeddings naming the same file and settings use one loaded model.

Example:
    >>> from langchain_rkllm import RKLLM, ChatRKLLM, RKLLMEmbeddings, RKLLMReranker
    >>> ChatRKLLM.__name__, RKLLM.__name__, RKLLMEmbeddings.__name__, RKLLMReranker.__name__
    ('ChatRKLLM', 'RKLLM', 'RKLLMEmbeddings', 'RKLLMReranker')
"""

from langchain_rkllm.chat_models import ChatRKLLM
from langchain_rkllm.embeddings import RKLLMEmbeddings
from langchain_rkllm.llms import RKLLM
from langchain_rkllm.rerankers import RKLLMReranker

__all__ = ["RKLLM", "ChatRKLLM", "RKLLMEmbeddings", "RKLLMReranker"]
