"""Write the notebooks from the cell sources below, then run them and keep their outputs.

    python notebooks/build.py            # write and execute every notebook in place
    python notebooks/build.py --no-run   # write only

Each notebook runs on the NPU when RKLLM_MODEL_PATH names a .rkllm model (and, for RAG, when
RKLLM_EMBED_MODEL_PATH names an embedding model), and on the host runtime with SmolLM2 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PICK = '''\
from rkllm_core.quickstart import pick_model

choice = pick_model()
print(choice.note)
print("model:", choice.model_path.name, "| on the NPU:", choice.on_npu)'''

QUICKSTART = [
    new_markdown_cell(
        "# Quickstart: load a model, stream a chat, call a tool, read the perf stats\n\n"
        "This notebook runs on a Rockchip board's NPU when `RKLLM_MODEL_PATH` names a `.rkllm` "
        "model, and otherwise on rkllm-py's host runtime with SmolLM2-135M-Instruct on the CPU. "
        "The first cell says which."),
    new_code_cell(PICK),
    new_markdown_cell("## Load the model once\n\n`rkllm_core.RKLLM` owns the loaded model; "
                      "every integration below shares it."),
    new_code_cell('''\
from rkllm_core import RKLLM

llm = RKLLM(choice.model_path, library=choice.library, max_context_len=2048,
            max_new_tokens=64, top_k=1)
info = llm.runtime_info
print(f"runtime {info.release} (family {info.family}), detected by {info.detection_method}")'''),
    new_markdown_cell("## Stream a chat with LangChain's `ChatRKLLM`"),
    new_code_cell('''\
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_rkllm import ChatRKLLM

chat = ChatRKLLM(client=llm, max_tokens=64)
history = [SystemMessage("You are a helpful assistant. Answer briefly."),
           HumanMessage("What is the capital of France?")]
reply = None
for chunk in chat.stream(history):
    print(chunk.content, end="", flush=True)
    reply = chunk if reply is None else reply + chunk
print()
print(reply.usage_metadata)'''),
    new_markdown_cell(
        "## Call a tool\n\nThe tool is offered through the runtime's function-calling support "
        "(`rkllm_set_function_tools`); `tool_choice` names it, so the model is asked to call it "
        "and asked once more if it does not. A 135M model does not always manage: a call it "
        "writes badly comes back in `invalid_tool_calls` with its raw text instead of failing."),
    new_code_cell('''\
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is sunny and 21 C in {city}."

ai = chat.bind_tools([get_weather], tool_choice="get_weather").invoke(
    "What is the weather in Paris?")
print("tool calls:", ai.tool_calls)
print("invalid tool calls:", [c["args"] for c in ai.invalid_tool_calls])'''),
    new_markdown_cell("## Perf stats per turn\n\nEach reply carries the runtime's own numbers. "
                      "The first turn below replays the conversation (the KV cache held the tool "
                      "call's conversation); after it, the cache holds this conversation and only "
                      "the new message is prefilled."),
    new_code_cell('''\
questions = ["Name a famous museum there.", "And a famous tower?", "Which river flows there?"]
history.append(AIMessage(reply.content))
turns = []
for q in questions:
    history.append(HumanMessage(q))
    ai = chat.invoke(history)
    history.append(AIMessage(ai.content))
    m = ai.response_metadata
    turns.append(m)
    print(f"{q:32} prefill {m['prefill_tokens']:4} tokens {m['prefill_ms']:7.1f} ms | "
          f"decode {ai.usage_metadata['output_tokens']:3} tokens {m['decode_ms']:7.1f} ms | "
          f"{m['tokens_per_second']:5.1f} tok/s | cache reused: {m['kv_cache_reused']}")'''),
    new_code_cell('''\
import matplotlib.pyplot as plt

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
names = [f"turn {i + 2}" for i in range(len(turns))]
left.bar(names, [t["prefill_ms"] for t in turns], label="prefill")
left.bar(names, [t["decode_ms"] for t in turns], bottom=[t["prefill_ms"] for t in turns],
         label="decode")
left.set_ylabel("ms")
left.set_title("prefill vs decode time")
left.legend()
right.plot(names, [t["tokens_per_second"] for t in turns], marker="o")
right.set_ylabel("tokens / s")
right.set_title("decode speed")
plt.tight_layout()
plt.show()'''),
]


LOAD_BOTH = '''\
import os
from pathlib import Path

from rkllm_core import RKLLM

llm = RKLLM(choice.model_path, library=choice.library, max_context_len=2048,
            max_new_tokens=96, top_k=1)
embed_path = os.environ.get("RKLLM_EMBED_MODEL_PATH")
# an embedding model (e.g. Qwen3-Embedding converted to .rkllm) retrieves far better; without
# one, the chat model's own hidden states serve as embeddings
embed_llm = RKLLM(embed_path, library=choice.library, max_context_len=512) if embed_path else llm
print("embeddings from:", Path(embed_path).name if embed_path else choice.model_path.name)
guide = sorted(Path("data/field-guide").glob("*.md"))
print(len(guide), "pages,", sum(len(p.read_text().split()) for p in guide), "words")'''

QUESTION = "Which NPU driver version does RKLLM need, and how do I check it?"

LANGCHAIN_RAG = [
    new_markdown_cell(
        "# RAG on the device with LangChain\n\nSplit a small document set (the RKLLM field "
        "guide in `data/field-guide`, written for this repo), embed it with `RKLLMEmbeddings` "
        "over the runtime's last-hidden-layer mode, retrieve, and answer with `ChatRKLLM`, all "
        "on one board. Without a board it runs on the host runtime with SmolLM2, whose answers "
        "and retrieval are those of a 135M model: the point here is the pipeline."),
    new_code_cell(PICK),
    new_code_cell(LOAD_BOTH),
    new_code_cell('''\
from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

docs = [Document(p.read_text(), metadata={"source": p.name}) for p in guide]
chunks = RecursiveCharacterTextSplitter(chunk_size=600, chunk_overlap=60).split_documents(docs)
print(len(chunks), "chunks")'''),
    new_code_cell('''\
import time

from langchain_core.vectorstores import InMemoryVectorStore

from langchain_rkllm import ChatRKLLM, RKLLMEmbeddings

embeddings = RKLLMEmbeddings(client=embed_llm)
started = time.perf_counter()
store = InMemoryVectorStore.from_documents(chunks, embeddings)
print(f"embedded {len(chunks)} chunks in {time.perf_counter() - started:.1f} s")
retriever = store.as_retriever(search_kwargs={"k": 3})'''),
    new_code_cell(f'''\
question = {QUESTION!r}
hits = store.similarity_search_with_score(question, k=3)
for doc, score in hits:
    print(f"{{score:.3f}}  {{doc.metadata['source']}}: {{doc.page_content[:120]!r}}")'''),
    new_code_cell('''\
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

prompt = ChatPromptTemplate.from_messages([
    ("system", "Answer the question from the context only. Be brief.\\n\\nContext:\\n{context}"),
    ("human", "{question}"),
])
chat = ChatRKLLM(client=llm, max_tokens=96)

def join(docs):
    return "\\n\\n".join(d.page_content for d in docs)

chain = {"context": retriever | join, "question": RunnablePassthrough()} | prompt | chat
answer = None
for chunk in chain.stream(question):
    print(chunk.content, end="", flush=True)
    answer = chunk if answer is None else answer + chunk
print()
print(answer.response_metadata["prefill_tokens"], "tokens prefilled,",
      round(answer.response_metadata["tokens_per_second"], 1), "tokens/s")'''),
    new_code_cell('''\
import matplotlib.pyplot as plt

scores = store.similarity_search_with_score(question, k=8)
plt.figure(figsize=(8, 3))
plt.barh([f"{d.metadata['source'][:28]}" for d, _ in scores][::-1], [s for _, s in scores][::-1])
plt.xlabel("cosine similarity to the question")
plt.title("retrieved chunks")
plt.tight_layout()
plt.show()'''),
]

LLAMAINDEX_RAG = [
    new_markdown_cell(
        "# RAG on the device with LlamaIndex\n\nA `VectorStoreIndex` over the RKLLM field "
        "guide with `RKLLMEmbedding`, a query engine that shows its sources, and a chat engine "
        "that keeps the conversation, with `RKLLM` as the LLM. No network: every component is "
        "given explicitly."),
    new_code_cell(PICK),
    new_code_cell(LOAD_BOTH),
    new_code_cell('''\
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

from llama_index_rkllm import RKLLM as RKLLMIndexLLM
from llama_index_rkllm import RKLLMEmbedding

documents = [Document(text=p.read_text(), metadata={"source": p.name}) for p in guide]
embed_model = RKLLMEmbedding(client=embed_llm)
index_llm = RKLLMIndexLLM(client=llm, max_new_tokens=96)
index = VectorStoreIndex.from_documents(
    documents, embed_model=embed_model,
    transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=32)])
print(len(index.docstore.docs), "nodes")'''),
    new_code_cell(f'''\
query_engine = index.as_query_engine(llm=index_llm, similarity_top_k=3)
response = query_engine.query({QUESTION!r})
print(response)
for node in response.source_nodes:
    print(f"{{node.score:.3f}}  {{node.metadata['source']}}: {{node.text[:100]!r}}")'''),
    new_code_cell('''\
chat_engine = index.as_chat_engine(chat_mode="condense_plus_context", llm=index_llm,
                                   similarity_top_k=2)
for q in ["What does keep_history do?", "And what happens when the context is full?"]:
    reply = chat_engine.chat(q)
    print(f"> {q}\\n{reply}\\n")
print(len(chat_engine.chat_history), "messages in the chat history")'''),
    new_code_cell('''\
import matplotlib.pyplot as plt

nodes = index.as_retriever(similarity_top_k=8).retrieve("How fast is Qwen2.5 1.5B on the RK3588?")
plt.figure(figsize=(8, 3))
plt.barh([n.metadata["source"][:28] for n in nodes][::-1], [n.score for n in nodes][::-1])
plt.xlabel("similarity")
plt.title("retrieved nodes")
plt.tight_layout()
plt.show()'''),
]

AGENTS = [
    new_markdown_cell(
        "# Agents: LangChain `create_agent` and LlamaIndex `FunctionAgent`\n\nThe same two "
        "tools for both. Tool calls go through the runtime's function-calling support, and the "
        "KV cache carries the conversation from one agent step to the next, so each step "
        "prefills only the tool result. A 135M model (the host runtime's SmolLM2) rarely calls "
        "tools well, and what it does differs from CPU to CPU; on a board use a tool-capable "
        "model such as Qwen2.5-1.5B-Instruct. Both agents are given a step budget that ends the "
        "run with an answer when it is spent, so a model that keeps calling tools cannot make "
        "them fail."),
    new_code_cell(PICK),
    new_code_cell('''\
from rkllm_core import RKLLM

llm = RKLLM(choice.model_path, library=choice.library, max_context_len=2048,
            max_new_tokens=96, top_k=1)

def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is sunny and 21 C in {city}."

def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b'''),
    new_code_cell('''\
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware

from langchain_rkllm import ChatRKLLM

agent = create_agent(ChatRKLLM(client=llm, max_tokens=96), tools=[get_weather, add],
                     system_prompt="Use the tools to answer.",
                     middleware=[ModelCallLimitMiddleware(run_limit=3, exit_behavior="end")])
state = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})
steps = []
for message in state["messages"]:
    kind = type(message).__name__
    calls = getattr(message, "tool_calls", None)
    print(f"{kind:12} {message.content[:80]!r} {calls or ''}")
    meta = getattr(message, "response_metadata", {}) or {}
    if "prefill_tokens" in meta:
        steps.append(meta)'''),
    new_code_cell('''\
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.tools import FunctionTool

from llama_index_rkllm import RKLLM as RKLLMIndexLLM

function_agent = FunctionAgent(
    tools=[FunctionTool.from_defaults(get_weather), FunctionTool.from_defaults(add)],
    llm=RKLLMIndexLLM(client=llm, max_new_tokens=96),
    system_prompt="Use the tools to answer.",
    early_stopping_method="generate")  # at max_iterations: one last call for an answer

async def ask():
    return await function_agent.run("What is 2 plus 40?", max_iterations=6)

print(await ask())'''),
    new_code_cell('''\
import matplotlib.pyplot as plt

if steps:
    plt.figure(figsize=(6, 3))
    plt.bar([f"step {i + 1}" for i in range(len(steps))], [m["prefill_tokens"] for m in steps])
    plt.ylabel("tokens prefilled")
    plt.title("LangChain agent: prefill per model call")
    plt.tight_layout()
    plt.show()'''),
]


def notebooks() -> dict[str, list[nbformat.NotebookNode]]:
    """Notebook file name -> cells."""
    return {"01_quickstart.ipynb": QUICKSTART, "02_langchain_rag.ipynb": LANGCHAIN_RAG,
            "03_llamaindex_rag.ipynb": LLAMAINDEX_RAG, "04_agents.ipynb": AGENTS}


def write(run: bool, only: list[str]) -> None:
    from nbclient import NotebookClient

    for name, cells in notebooks().items():
        if only and not any(o in name for o in only):
            continue
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        path = HERE / name
        if run:
            NotebookClient(nb, timeout=900, kernel_name="python3",
                           resources={"metadata": {"path": str(HERE)}}).execute()
        nbformat.write(nb, path)
        print("wrote", path)


if __name__ == "__main__":
    write("--no-run" not in sys.argv, [a for a in sys.argv[1:] if not a.startswith("--")])
