"""Chat templates: every preset renders one tool-using conversation exactly in its family's
documented format; rendering behaves like transformers; presets are guessed from file names;
Hugging Face folders give their own template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rkllm_core.chat.templates import (
    PRESETS,
    ChatPreset,
    load_hf_template,
    preset_for,
    render_chat,
)
from rkllm_core.errors import InvalidParameterError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        },
    }
]
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
}
RESULT = '{"temperature": 18, "condition": "cloudy"}'
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
    {"role": "user", "content": "Should I take an umbrella?"},
]

# ---- the expected prompts, written out ----

TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_weather", '
    '"description": "Get the current weather for a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string", '
    '"description": "City name"}}, "required": ["city"]}}}'
)
HERMES_TOOLS = (
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n" + TOOL_JSON + "\n"
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
HERMES_RESULT = "<tool_response>\n" + RESULT + "\n</tool_response>"

CHATML = (
    "<|im_start|>system\n"
    "You are a concise assistant.\n\n" + HERMES_TOOLS + "<|im_end|>\n"
    "<|im_start|>user\n"
    "What is the weather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n" + HERMES_CALL + "<|im_end|>\n"
    "<|im_start|>user\n" + HERMES_RESULT + "<|im_end|>\n"
    "<|im_start|>user\n"
    "Should I take an umbrella?<|im_end|>\n"
    "<|im_start|>assistant\n"
)

TOOL_JSON_INDENTED = (
    "{\n"
    '    "type": "function",\n'
    '    "function": {\n'
    '        "name": "get_weather",\n'
    '        "description": "Get the current weather for a city.",\n'
    '        "parameters": {\n'
    '            "type": "object",\n'
    '            "properties": {\n'
    '                "city": {\n'
    '                    "type": "string",\n'
    '                    "description": "City name"\n'
    "                }\n"
    "            },\n"
    '            "required": [\n'
    '                "city"\n'
    "            ]\n"
    "        }\n"
    "    }\n"
    "}"
)
LLAMA3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Environment: ipython\n"
    "Cutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n"
    "\n"
    "You are a concise assistant.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.Do not use variables.\n\n" + TOOL_JSON_INDENTED + "\n\n"
    "What is the weather in Paris?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
    "<|start_header_id|>ipython<|end_header_id|>\n\n" + RESULT + "<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "Should I take an umbrella?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

GEMMA = (
    "<bos><start_of_turn>user\n"
    "You are a concise assistant.\n\n" + HERMES_TOOLS + "\n\n"
    "What is the weather in Paris?<end_of_turn>\n"
    "<start_of_turn>model\n" + HERMES_CALL + "<end_of_turn>\n"
    "<start_of_turn>user\n" + HERMES_RESULT + "\n"
    "Should I take an umbrella?<end_of_turn>\n"
    "<start_of_turn>model\n"
)

PHI3 = (
    "<|system|>\n"
    "You are a concise assistant.\n\n" + HERMES_TOOLS + "<|end|>\n"
    "<|user|>\n"
    "What is the weather in Paris?<|end|>\n"
    "<|assistant|>\n" + HERMES_CALL + "<|end|>\n"
    "<|user|>\n" + HERMES_RESULT + "<|end|>\n"
    "<|user|>\n"
    "Should I take an umbrella?<|end|>\n"
    "<|assistant|>\n"
)

INTERNLM2 = (
    "<s><|im_start|>system\n"
    "You are a concise assistant.<|im_end|>\n"
    "<|im_start|>system name=<|plugin|>\n"
    '[{"name": "get_weather", "description": "Get the current weather for a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string", '
    '"description": "City name"}}, "required": ["city"]}}]<|im_end|>\n'
    "<|im_start|>user\n"
    "What is the weather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<|action_start|><|plugin|>\n"
    '{"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|><|im_end|>\n'
    "<|im_start|>environment name=<|plugin|>\n" + RESULT + "<|im_end|>\n"
    "<|im_start|>user\n"
    "Should I take an umbrella?<|im_end|>\n"
    "<|im_start|>assistant\n"
)

# DeepSeek's tokens: FULLWIDTH VERTICAL LINE bars, LOWER ONE EIGHTH BLOCK for spaces
DS_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
DS_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
DS_USER = "<\uff5cUser\uff5c>"
DS_ASSISTANT = "<\uff5cAssistant\uff5c>"
DS_CALLS_BEGIN = "<\uff5ctool\u2581calls\u2581begin\uff5c>"
DS_CALLS_END = "<\uff5ctool\u2581calls\u2581end\uff5c>"
DS_CALL_BEGIN = "<\uff5ctool\u2581call\u2581begin\uff5c>"
DS_CALL_END = "<\uff5ctool\u2581call\u2581end\uff5c>"
DS_SEP = "<\uff5ctool\u2581sep\uff5c>"
DS_OUTPUTS_BEGIN = "<\uff5ctool\u2581outputs\u2581begin\uff5c>"
DS_OUTPUTS_END = "<\uff5ctool\u2581outputs\u2581end\uff5c>"
DS_OUTPUT_BEGIN = "<\uff5ctool\u2581output\u2581begin\uff5c>"
DS_OUTPUT_END = "<\uff5ctool\u2581output\u2581end\uff5c>"
DEEPSEEK_R1 = (
    DS_BOS + "You are a concise assistant.\n\n"
    "You have access to the following tools:\n"
    "\n"
    "### get_weather\n"
    "Description: Get the current weather for a city.\n"
    'Parameters: {"type": "object", "properties": {"city": {"type": "string", '
    '"description": "City name"}}, "required": ["city"]}\n'
    "\n"
    "To call tools, answer in exactly this format:\n"
    + DS_CALLS_BEGIN + DS_CALL_BEGIN + "function" + DS_SEP
    + "<tool name>\n```json\n<arguments as a JSON object>\n```" + DS_CALL_END + DS_CALLS_END
    + DS_USER + "What is the weather in Paris?"
    + DS_ASSISTANT + DS_CALLS_BEGIN + DS_CALL_BEGIN + "function" + DS_SEP
    + 'get_weather\n```json\n{"city": "Paris"}\n```' + DS_CALL_END + DS_CALLS_END + DS_EOS
    + DS_OUTPUTS_BEGIN + DS_OUTPUT_BEGIN + RESULT + DS_OUTPUT_END + DS_OUTPUTS_END
    + DS_USER + "Should I take an umbrella?"
    + DS_ASSISTANT + "<think>\n"
)  # fmt: skip

# With a system prompt given, the ChatML families differ only in their defaults.
EXPECTED = {
    "chatml": CHATML,
    "qwen2": CHATML,
    "qwen3": CHATML,
    "minicpm": CHATML,
    "smollm": CHATML,
    "llama3": LLAMA3,
    "gemma": GEMMA,
    "phi3": PHI3,
    "internlm2": INTERNLM2,
    "deepseek_r1": DEEPSEEK_R1,
}


def test_every_preset_has_a_pinned_rendering() -> None:
    assert set(EXPECTED) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_renders_the_tool_conversation_in_its_family_format(name: str) -> None:
    prompt = PRESETS[name].render(CONVERSATION, tools=TOOLS, date_string="26 Jul 2024")
    assert prompt == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_json_string_arguments_render_like_dict_arguments(name: str) -> None:
    wire_call = {**CALL, "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages: list[dict[str, Any]] = [
        *CONVERSATION[:2],
        {**CONVERSATION[2], "tool_calls": [wire_call]},
        *CONVERSATION[3:],
    ]
    prompt = PRESETS[name].render(messages, tools=TOOLS, date_string="26 Jul 2024")
    assert prompt == EXPECTED[name]


# ---- defaults and family rules ----


def test_qwen2_and_smollm_add_their_default_system_prompt_only_when_none_is_given() -> None:
    hello = [{"role": "user", "content": "Hello"}]
    assert PRESETS["qwen2"].render(hello) == (
        "<|im_start|>system\n"
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        "Hello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert PRESETS["smollm"].render(hello) == (
        "<|im_start|>system\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n"
        "Hello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert PRESETS["chatml"].render(hello) == (
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm_puts_tools_after_its_default_system_prompt() -> None:
    prompt = PRESETS["smollm"].render([{"role": "user", "content": "Hi"}], tools=TOOLS)
    assert prompt.startswith(
        "<|im_start|>system\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face\n\n# Tools\n"
    )


def test_qwen3_thinking_off_appends_an_empty_think_block_to_the_generation_prompt() -> None:
    hello = [{"role": "user", "content": "Hello"}]
    off = PRESETS["qwen3"].render(hello, enable_thinking=False)
    assert off == (
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


@pytest.mark.parametrize("enable_thinking", [True, None])
def test_qwen3_thinking_on_leaves_the_generation_prompt_open(enable_thinking: bool | None) -> None:
    hello = [{"role": "user", "content": "Hello"}]
    prompt = PRESETS["qwen3"].render(hello, enable_thinking=enable_thinking)
    assert prompt == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


def test_qwen3_keeps_reasoning_only_in_the_turn_after_the_last_user_query() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nsimple\n</think>\n\n4"},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "reasoning_content": "need the tool",
            "tool_calls": [CALL],
        },
        {"role": "tool", "content": RESULT},
    ]
    assert PRESETS["qwen3"].render(messages) == (
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nneed the tool\n</think>\n\nLet me check.\n"
        + HERMES_CALL
        + "<|im_end|>\n"
        "<|im_start|>user\n" + HERMES_RESULT + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_gemma_folds_the_system_prompt_into_the_first_user_turn() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Thanks"},
    ]
    assert PRESETS["gemma"].render(messages) == (
        "<bos><start_of_turn>user\n"
        "Answer in French.\n\nHello<end_of_turn>\n"
        "<start_of_turn>model\nBonjour<end_of_turn>\n"
        "<start_of_turn>user\nThanks<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_without_a_system_prompt_starts_with_the_user_text() -> None:
    prompt = PRESETS["gemma"].render([{"role": "user", "content": "Hello"}])
    assert prompt == "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"


def test_deepseek_r1_drops_past_reasoning_and_opens_think_at_the_prompt() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nsimple\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
    ]
    assert PRESETS["deepseek_r1"].render(messages) == (
        DS_BOS + DS_USER + "2+2?" + DS_ASSISTANT + "\n\n4" + DS_EOS
        + DS_USER + "3+3?" + DS_ASSISTANT + "<think>\n"
    )  # fmt: skip
    assert PRESETS["deepseek_r1"].prompt_ends_in_thinking


def test_llama3_refuses_two_tool_calls_in_one_turn() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL, CALL]},
    ]
    with pytest.raises(InvalidParameterError, match="one tool call per assistant turn"):
        PRESETS["llama3"].render(messages, tools=TOOLS)


def test_llama3_dates_the_system_turn_today_unless_told() -> None:
    prompt = PRESETS["llama3"].render([{"role": "user", "content": "Hi"}])
    assert "\nToday Date: " in prompt
    assert "Environment: ipython" not in prompt


def test_presets_describe_their_stops_and_markers() -> None:
    assert PRESETS["llama3"].stop[0] == "<|eot_id|>"
    assert PRESETS["llama3"].tool_call_format == "llama3_json"
    assert PRESETS["gemma"].stop[0] == "<end_of_turn>"
    assert PRESETS["qwen3"].supports_thinking
    assert not PRESETS["qwen2"].supports_thinking
    assert (PRESETS["qwen3"].think_start, PRESETS["qwen3"].think_end) == ("<think>", "</think>")
    assert PRESETS["deepseek_r1"].stop == (DS_EOS,)


# ---- render_chat behaves like transformers ----


def test_tojson_keeps_non_ascii_and_takes_indent() -> None:
    template = "{{ messages[0].content | tojson }}|{{ {'a': [1]} | tojson(indent=2) }}"
    out = render_chat(template, [{"role": "user", "content": "Grüß 你好 <&>"}])
    assert out == '"Grüß 你好 <&>"|{\n  "a": [\n    1\n  ]\n}'


def test_blocks_are_trimmed_like_transformers() -> None:
    template = (
        "{% for m in messages %}\n"
        "  {% if m.role == 'user' %}\n"
        "[{{ m.content }}]\n"
        "  {% endif %}\n"
        "{% endfor %}"
    )
    two = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    out = render_chat(template, two)
    assert out == "[a]\n[b]\n"


def test_raise_exception_in_a_template_is_an_invalid_parameter_error() -> None:
    with pytest.raises(InvalidParameterError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", [])


def test_a_template_that_does_not_parse_is_an_invalid_parameter_error() -> None:
    with pytest.raises(InvalidParameterError, match="does not parse"):
        render_chat("{% for m in messages %}", [])


def test_strftime_now_generation_blocks_and_loop_controls_are_available() -> None:
    template = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
        "|{{ strftime_now('%Y') | length }}"
    )
    messages = [{"role": "user", "content": "kept"}, {"role": "user", "content": "dropped"}]
    assert render_chat(template, messages) == "kept|4"


def test_enable_thinking_is_undefined_unless_given() -> None:
    template = "{{ enable_thinking is defined }}"
    assert render_chat(template, []) == "False"
    assert render_chat(template, [], enable_thinking=False) == "True"


def test_none_content_and_text_parts_render_as_strings() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert render_chat("{% for m in messages %}[{{ m.content }}]{% endfor %}", messages) == "[][ab]"


def test_a_template_undefined_error_is_an_invalid_parameter_error() -> None:
    with pytest.raises(InvalidParameterError, match="failed to render"):
        render_chat("{{ messages[0].content.missing() }}", [{"role": "user", "content": "a"}])


def test_templates_cannot_mutate_the_callers_messages() -> None:
    messages = [{"role": "user", "content": "a"}]
    with pytest.raises(InvalidParameterError, match="unsafe"):
        render_chat("{{ messages.append(1) }}", messages)
    assert messages == [{"role": "user", "content": "a"}]


# ---- preset_for ----


@pytest.mark.parametrize(
    ("model", "preset"),
    [
        ("Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm", "qwen2"),
        ("/models/Qwen2-VL-2B-Instruct.rkllm", "qwen2"),
        ("Qwen3-1.7B-w8a8-rk3588.rkllm", "qwen3"),
        ("DeepSeek-R1-Distill-Qwen-1.5B_W8A8_RK3588.rkllm", "deepseek_r1"),
        ("deepseek-r1-distill-llama-8b.rkllm", "deepseek_r1"),
        ("Llama-3.2-1B-Instruct_w8a8.rkllm", "llama3"),
        ("Meta-Llama-3.1-8B-Instruct.rkllm", "llama3"),
        ("gemma-3-1b-it_w8a8.rkllm", "gemma"),
        ("gemma-2-2b-it.rkllm", "gemma"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm"),
        ("Phi-3-mini-4k-instruct.rkllm", "phi3"),
        ("phi-3.5-mini.rkllm", "phi3"),
        ("MiniCPM4-0.5B.rkllm", "minicpm"),
        ("internlm2_5-1_8b-chat.rkllm", "internlm2"),
        ("internlm2-chat-1_8b.rkllm", "internlm2"),
        ("qwen3", "qwen3"),
        ("chatml", "chatml"),
    ],
)
def test_preset_for_tells_the_family_from_the_model_file_name(model: str, preset: str) -> None:
    assert preset_for(model).name == preset


def test_preset_for_an_unknown_model_names_the_known_presets() -> None:
    with pytest.raises(InvalidParameterError, match="chatml, deepseek_r1, gemma") as caught:
        preset_for("/models/TinyLlama-1.1B-Chat.rkllm")
    assert "TinyLlama" in str(caught.value)


def test_presets_are_frozen() -> None:
    with pytest.raises(AttributeError):
        PRESETS["qwen2"].name = "other"  # type: ignore[misc]
    assert isinstance(PRESETS["qwen2"], ChatPreset)


# ---- load_hf_template ----


def write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def test_load_hf_template_reads_the_template_and_special_tokens(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        {
            "chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
            "bos_token": {"content": "<s>", "lstrip": False},
            "eos_token": "</s>",
        },
    )
    template, tokens = load_hf_template(tmp_path)
    assert tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    assert render_chat(template, [{"role": "user", "content": "Hi"}], **tokens) == "<s>Hi</s>"
    assert load_hf_template(tmp_path / "tokenizer_config.json")[0] == template


def test_load_hf_template_picks_a_named_template_from_a_list(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        {
            "chat_template": [
                {"name": "default", "template": "plain"},
                {"name": "tool_use", "template": "with tools"},
            ]
        },
    )
    assert load_hf_template(tmp_path)[0] == "plain"
    assert load_hf_template(tmp_path, name="tool_use")[0] == "with tools"
    with pytest.raises(InvalidParameterError, match="default, tool_use"):
        load_hf_template(tmp_path, name="rag")


def test_a_chat_template_jinja_file_wins_over_tokenizer_config(tmp_path: Path) -> None:
    write_config(tmp_path, {"chat_template": "from config", "eos_token": "<|im_end|>"})
    (tmp_path / "chat_template.jinja").write_text("from file", encoding="utf-8")
    assert load_hf_template(tmp_path) == ("from file", {"bos_token": "", "eos_token": "<|im_end|>"})


def test_a_folder_without_a_template_is_refused_with_the_alternative(tmp_path: Path) -> None:
    write_config(tmp_path, {"eos_token": "</s>"})
    with pytest.raises(InvalidParameterError, match="use a preset instead"):
        load_hf_template(tmp_path)


@pytest.mark.gguf
def test_smollm_preset_matches_the_template_shipped_in_the_gguf() -> None:
    gguf = pytest.importorskip("gguf")
    from rkllm_core.host.models import smollm2_path

    field = gguf.GGUFReader(smollm2_path()).fields["tokenizer.chat_template"]
    shipped = bytes(field.parts[field.data[0]]).decode("utf-8")
    for messages in (
        [{"role": "user", "content": "Hi"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ],
    ):
        for add_generation_prompt in (True, False):
            ours = PRESETS["smollm"].render(messages, add_generation_prompt=add_generation_prompt)
            theirs = render_chat(shipped, messages, add_generation_prompt=add_generation_prompt)
            assert ours == theirs
