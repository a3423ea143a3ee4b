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


def notebooks() -> dict[str, list[nbformat.NotebookNode]]:
    """Notebook file name -> cells."""
    return {"01_quickstart.ipynb": QUICKSTART}


def write(run: bool) -> None:
    from nbclient import NotebookClient

    for name, cells in notebooks().items():
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        path = HERE / name
        if run:
            NotebookClient(nb, timeout=900, kernel_name="python3",
                           resources={"metadata": {"path": str(HERE)}}).execute()
        nbformat.write(nb, path)
        print("wrote", path)


if __name__ == "__main__":
    write(run="--no-run" not in sys.argv)
