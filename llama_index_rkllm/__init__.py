"""LlamaIndex integration of rkllm-py: LLM, embeddings and reranker on an RKLLM model.

Example:
    >>> from llama_index_rkllm import RKLLM, RKLLMEmbedding, RKLLMRerank
    >>> RKLLM.class_name(), RKLLMEmbedding.class_name(), RKLLMRerank.class_name()
    ('RKLLM_llm', 'RKLLMEmbedding', 'RKLLMRerank')
"""

from llama_index_rkllm.embeddings import RKLLMEmbedding
from llama_index_rkllm.llms import RKLLM
from llama_index_rkllm.postprocessors import RKLLMRerank

__all__ = ["RKLLM", "RKLLMEmbedding", "RKLLMRerank"]
