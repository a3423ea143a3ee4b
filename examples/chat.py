"""The README's main job: a streaming ChatRKLLM chat.

On a board: RKLLM_MODEL_PATH=/path/model.rkllm python examples/chat.py
Anywhere else: python examples/chat.py  (SmolLM2 on the host CPU)
"""

from __future__ import annotations

import sys

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_rkllm import ChatRKLLM
from rkllm_core.quickstart import pick_model


def main(argv: list[str]) -> int:
    choice = pick_model()
    print(choice.note, flush=True)
    llm = ChatRKLLM(model_path=str(choice.model_path), library=choice.library,
                    max_context_len=2048, max_tokens=96, top_k=1)
    questions = argv or ["What is the capital of France?", "And what is it famous for?"]
    history: list[HumanMessage | AIMessage | SystemMessage] = [
        SystemMessage("You are a helpful assistant. Answer briefly.")]
    for question in questions:
        history.append(HumanMessage(question))
        print(f"\n> {question}\n", flush=True)
        reply = None
        for chunk in llm.stream(history):
            print(chunk.content, end="", flush=True)
            reply = chunk if reply is None else reply + chunk
        assert reply is not None
        meta = reply.response_metadata
        print(f"\n\n[{meta.get('finish_reason')}; prefill {meta.get('prefill_tokens')} tokens in "
              f"{meta.get('prefill_ms', 0):.0f} ms; {meta.get('tokens_per_second', 0):.1f} "
              f"tokens/s; KV cache reused: {meta.get('kv_cache_reused')}; runtime "
              f"{meta.get('runtime_release')}]", flush=True)
        history.append(AIMessage(reply.content))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
