"""Suite 4: documents per second, embedding short documents one run each.

Every variant does the same work per document: clear the KV cache, one hidden-state run of the
templated prompt, mean-pool and L2-normalise. The runtime-only loop does it through the raw
ctypes layer (copying the hidden states inside the callback, as the runtime frees them after
it); the others go through ``RKLLM.embed`` and the two adapters.
"""

from __future__ import annotations

import ctypes
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._common import WORDS, Context, RawSession, quiet_stderr, summary

HIDDEN_SIZE = 1536  # Qwen2.5-1.5B's


def documents(n: int, seed: int = 9) -> list[str]:
    """``n`` short documents of 6-14 words, always the same."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
            for _ in range(n)]


def _raw_loop(ctx: Context, model: Any, max_ctx: int) -> Callable[[list[str]], np.ndarray]:
    arrays: list[np.ndarray] = []
    release = 2 if ctx.library.family.key == "1.3.0" else 0

    def callback(result: Any, state: int) -> int:
        if state == 0 and result:
            layer = ctypes.cast(result, session.result_type)[0].last_hidden_layer
            if layer.hidden_states and layer.num_tokens > 0:
                arrays.append(np.ctypeslib.as_array(
                    layer.hidden_states, (layer.num_tokens, layer.embd_size)).copy())
                return release
        return 0

    session = RawSession(ctx.library, model, max_ctx, callback)
    infer = session.make_infer(mode=1)
    lib = ctx.library

    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            arrays.clear()
            lib.clear_kv_cache(session.handle, False)
            inp, keep = session.make_input(text)
            if session.run(inp, infer) != 0 or not arrays:
                raise RuntimeError("the raw hidden-state run failed")
            del keep
            vector = np.concatenate(arrays).mean(axis=0)
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows)

    embed.session = session  # type: ignore[attr-defined]
    return embed


def run(ctx: Context) -> dict[str, Any]:
    """Documents per second per variant; see the module docstring."""
    n_docs = 50 if ctx.quick else 1000
    rounds = 2 if ctx.quick else 5
    max_ctx = 512
    docs = documents(n_docs)
    model = ctx.scripted_model("embeddings", f"max_context_limit = {max_ctx}\n"
                                             f"hidden_size = {HIDDEN_SIZE}\n")
    notes: list[str] = []

    from rkllm_core import RKLLM

    with quiet_stderr():
        llm = RKLLM(model, library=ctx.library, max_context_len=max_ctx)
    raw = _raw_loop(ctx, model, max_ctx)
    variants: dict[str, Callable[[list[str]], object]] = {
        "runtime_loop": raw,
        "core_embed": lambda texts: llm.embed(texts),
    }
    labels = {
        "runtime_loop": "runtime-only loop (raw ctypes, hidden-state mode)",
        "core_embed": "RKLLM.embed",
        "langchain": "RKLLMEmbeddings.embed_documents (LangChain)",
        "llamaindex": "RKLLMEmbedding.get_text_embedding_batch (LlamaIndex)",
    }
    try:
        try:
            from langchain_rkllm import RKLLMEmbeddings

            lc = RKLLMEmbeddings(client=llm)
            variants["langchain"] = lambda texts: lc.embed_documents(texts)
        except Exception as exc:  # an adapter still being written must not stop the others
            notes.append(f"LangChain RKLLMEmbeddings skipped: {type(exc).__name__}: {exc}")
        try:
            from llama_index_rkllm import RKLLMEmbedding

            li = RKLLMEmbedding(client=llm, embed_batch_size=64)
            variants["llamaindex"] = lambda texts: li.get_text_embedding_batch(texts)
        except Exception as exc:
            notes.append(f"LlamaIndex RKLLMEmbedding skipped: {type(exc).__name__}: {exc}")

        reference = np.asarray(raw(docs[:8]))
        for name, fn in variants.items():  # warm-up, and the variants must agree
            got = np.asarray(fn(docs[:8]), dtype=np.float32)
            if got.shape != reference.shape or not np.allclose(got, reference, atol=1e-4):
                notes.append(f"{name}: vectors differ from the runtime-only loop's")
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn(docs)
                samples[name].append(n_docs / (time.perf_counter() - start))
    finally:
        raw.session.close()  # type: ignore[attr-defined]
        llm.close()
    floor = summary(samples["runtime_loop"])["median"]
    rows = []
    for name, values in samples.items():
        s = summary(values)
        rows.append({
            "variant": name,
            "label": labels[name],
            "docs_per_second": s,
            "ratio_to_runtime_loop": s["median"] / floor,
            "us_added_per_doc": 1e6 / s["median"] - 1e6 / floor,
        })
    return {
        "description": "Embedding throughput, one run per document",
        "documents": n_docs,
        "hidden_size": HIDDEN_SIZE,
        "rounds": rounds,
        "rows": rows,
        "notes": notes,
    }
