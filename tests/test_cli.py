"""The ``rkllm`` command and the README's main job, on the host runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkllm_core.cli import main
from rkllm_core.quickstart import pick_model

ROOT = Path(__file__).resolve().parent.parent


def test_chat_streams_a_reply_and_keeps_the_conversation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.scripted"
    model.write_text('RKLLM-SCRIPTED 1\nwhen contains "what is my name" remembers "alice" '
                     'reply "Your name is Alice."\ndefault reply "Nice to meet you."\n')
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("I am Alice.\nWhat is my name?\n"))
    assert main(["chat", "--model", str(model), "--max-context-len", "512"]) == 0
    out = capsys.readouterr()
    assert "Nice to meet you." in out.out and "Your name is Alice." in out.out
    assert "host CPU" in out.err


def test_info_names_the_release_and_how_it_was_found(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--library", "host", "--runtime-version", "1.2.3"]) == 0
    out = capsys.readouterr().out
    assert "runtime:   1.2.3" in out and "detected:  explicit" in out


def test_a_missing_library_is_a_clear_message_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--library", str(tmp_path / "nope.so")]) == 2
    assert "LibraryNotFoundError" in capsys.readouterr().err


def test_the_model_choice_follows_the_environment(tmp_path: Path) -> None:
    board = pick_model({"RKLLM_MODEL_PATH": "/models/qwen.rkllm"})
    assert board.on_npu and board.library is None and "NPU" in board.note
    host = pick_model({"RKLLM_MODEL_PATH": str(tmp_path / "m.gguf")})
    assert (host.on_npu, host.library) == (False, "host")


@pytest.mark.gguf
def test_the_readme_main_job_streams_a_real_answer_on_the_host_cpu() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "chat.py"), "What is the capital of France?"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "host CPU" in result.stdout
    assert "Paris" in result.stdout
    assert "runtime 1.3.0" in result.stdout
