"""Suite 6: how long tokens mode takes to load a GGUF's tokenizer, each load in a fresh interpreter.

``ChatTokenizer.from_gguf`` on SmolLM2-135M-Instruct's GGUF, timed with ``time.perf_counter``
inside the child around the call alone (the lazy ``import llama_cpp`` it does is included: a
user pays it on the first load). Two engines, taking turns in each round: llama.cpp's tokenizer
on a vocabulary-only load (llama-cpp-python installed), and the Python rebuild over ``gguf`` +
``tokenizers`` that runs where llama_cpp does not import (the child sets
``sys.modules["llama_cpp"] = None``). The first ``encode`` of a rendered chat prompt is timed
too, and the two engines' ids for it are compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from benchmarks._common import REPO, Context, summary
from benchmarks.imports import _env

ENGINES = {
    "llama.cpp": "",
    "rebuilt": 'sys.modules["llama_cpp"] = None  # as where llama-cpp-python is not installed',
}

_CHILD = """
import json, sys, time
{block}
from rkllm_core.chat.templates import PRESETS
from rkllm_core.chat.tokenizer import ChatTokenizer
prompt = PRESETS["smollm"].render([{{"role": "user", "content": "What is the capital of France?"}}])
start = time.perf_counter()
tokenizer = ChatTokenizer.from_gguf({path!r})
loaded = time.perf_counter()
ids = tokenizer.encode(prompt)
encoded = time.perf_counter()
print(json.dumps({{"load_s": loaded - start, "encode_s": encoded - loaded, "ids": ids,
                  "engine": type(tokenizer.tokenizer).__name__}}))
"""


def _child(engine: str, path: str) -> dict[str, Any]:
    code = _CHILD.format(block=ENGINES[engine], path=path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=_env(), cwd=REPO)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(ctx: Context) -> dict[str, Any]:
    """Tokenizer load time per engine; see the module docstring."""
    repeats = 1 if ctx.quick else 7
    notes: list[str] = []
    try:
        from rkllm_core.host.models import smollm2_path

        path = str(smollm2_path())
    except Exception as exc:  # the host extra is not installed: nothing to load
        return {"description": "GGUF tokenizer load", "repeats": repeats, "rows": [],
                "notes": [f"skipped: {exc}"]}
    measured: dict[str, dict[str, list[float]]] = {e: {"load_ms": [], "encode_ms": []}
                                                   for e in ENGINES}
    ids: dict[str, list[int]] = {}
    classes: dict[str, str] = {}
    available = list(ENGINES)
    for _ in range(repeats):  # interleaved, so drifts of the machine hit both engines alike
        for engine in list(available):
            try:
                got = _child(engine, path)
            except subprocess.CalledProcessError as exc:
                notes.append(f"{engine} skipped: {exc.stderr.strip()[-300:]}")
                available.remove(engine)
                continue
            measured[engine]["load_ms"].append(got["load_s"] * 1000.0)
            measured[engine]["encode_ms"].append(got["encode_s"] * 1000.0)
            ids[engine], classes[engine] = got["ids"], got["engine"]
    if "llama.cpp" in classes and classes["llama.cpp"] != "LlamaVocabulary":
        notes.append("llama_cpp does not import here: both rows ran the Python rebuild")
    rows = [{"engine": engine, "tokenizer_class": classes[engine],
             "load_ms": summary(measured[engine]["load_ms"]),
             "first_encode_ms": summary(measured[engine]["encode_ms"]),
             "prompt_tokens": len(ids[engine])} for engine in available]
    return {
        "description": "ChatTokenizer.from_gguf on SmolLM2-135M-Instruct, fresh interpreter",
        "model": path.rsplit("/", 1)[-1],
        "repeats": repeats,
        "rows": rows,
        "same_ids": len({json.dumps(v) for v in ids.values()}) == 1 if ids else None,
        "notes": notes,
    }
