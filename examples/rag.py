"""RAG on the device: retrieve from the RKLLM field guide, answer with the passages shown.

On a board: RKLLM_MODEL_PATH=chat.rkllm [RKLLM_EMBED_MODEL_PATH=embed.rkllm] python examples/rag.py
Anywhere else: python examples/rag.py  (SmolLM2 on the host CPU, for the chat and the embeddings)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import RecursiveCharacterTextSplitter

from langchain_rkllm import ChatRKLLM, RKLLMEmbeddings
from rkllm_core import RKLLM
from rkllm_core.quickstart import pick_model

GUIDE = Path(__file__).resolve().parent.parent / "notebooks" / "data" / "field-guide"


def main(argv: list[str]) -> int:
    question = " ".join(argv) or "Which NPU driver version does RKLLM need?"
    choice = pick_model()
    print(choice.note, flush=True)
    llm = RKLLM(choice.model_path, library=choice.library, max_context_len=2048,
                max_new_tokens=96, top_k=1)
    embed_path = os.environ.get("RKLLM_EMBED_MODEL_PATH")
    embed_llm = RKLLM(embed_path, library=choice.library, max_context_len=512) \
        if embed_path else llm
    docs = [Document(p.read_text(), metadata={"source": p.name})
            for p in sorted(GUIDE.glob("*.md"))]
    chunks = RecursiveCharacterTextSplitter(chunk_size=800, chunk_overlap=0).split_documents(docs)
    started = time.perf_counter()
    store = InMemoryVectorStore.from_documents(chunks, RKLLMEmbeddings(client=embed_llm))
    print(f"embedded {len(chunks)} passages of the field guide in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    hits = store.similarity_search(question, k=2)
    print("\nretrieved:")
    for doc in hits:
        print(f"  - {doc.metadata['source']}: {doc.page_content[:90]!r}...")
    context = "\n\n".join(d.page_content for d in hits)
    chat = ChatRKLLM(client=llm, max_tokens=96)
    print(f"\n> {question}\n", flush=True)
    messages = [("system", f"Answer from the context only. Be brief.\n\nContext:\n{context}"),
                ("human", question)]
    for chunk in chat.stream(messages):
        print(chunk.content, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
