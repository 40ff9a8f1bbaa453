"""Chat templates of the common model families, rendered the way the product renders them.

Each template in ``tests/fixtures/chat_templates`` is written from its family's documented turn
format (not copied from a model file). A GGUF file per family is made from the packaged SmolLM2
file (its architecture, tokenizer and tensors) with ``tokenizer.chat_template`` replaced, loaded
through ``edgescale.loader`` and asked to format messages: the tokens must be those of the
expected text, with the template's markers parsed as this tokenizer's special tokens.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import pytest

from edgescale.errors import UsageError
from edgescale.loader import LoadSpec, load_engine
from edgescale.models.catalog import resolve_model
from edgescale.models.info import chat_template_family, read_model_info
from edgescale.runtime.chat import ChatText, prompt_text, render_chat
from edgescale.runtime.llama_engine import LlamaCppEngine

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
FAMILIES = ("llama3", "qwen2.5", "qwen3", "gemma", "phi3", "phi4", "mistral", "smollm")

Q1, A1, Q2 = "What is 2+2?", "4", "And 3+3?"
SYSTEM = "Answer briefly."
SINGLE = [{"role": "user", "content": Q1}]
WITH_SYSTEM = [{"role": "system", "content": SYSTEM}, *SINGLE]
MULTI = [*SINGLE, {"role": "assistant", "content": A1}, {"role": "user", "content": Q2}]

# The renders, written out: <BOS>/<EOS> stand for the file's BOS and EOS text (the packaged
# tokenizer's: SmolLM2's), <DATE> for today's date as the Llama 3 template writes it.
LLAMA3_HEAD = ("<BOS><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
               "Today Date: <DATE>\n\n")
LLAMA3_TAIL = (f"<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{Q1}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n")
CHATML_USER = f"<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n"
CHATML_SYSTEM = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
EXPECTED: dict[str, tuple[str, str]] = {  # family: (single turn, with a system prompt)
    "llama3": (LLAMA3_HEAD + LLAMA3_TAIL, LLAMA3_HEAD + SYSTEM + LLAMA3_TAIL),
    "qwen2.5": ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                + CHATML_USER, CHATML_SYSTEM + CHATML_USER),
    "qwen3": (CHATML_USER, CHATML_SYSTEM + CHATML_USER),
    "gemma": (f"<BOS><start_of_turn>user\n{Q1}<end_of_turn>\n<start_of_turn>model\n",
              f"<BOS><start_of_turn>user\n{SYSTEM}\n\n{Q1}<end_of_turn>\n<start_of_turn>model\n"),
    "phi3": (f"<|user|>\n{Q1}<|end|>\n<|assistant|>\n",
             f"<|system|>\n{SYSTEM}<|end|>\n<|user|>\n{Q1}<|end|>\n<|assistant|>\n"),
    "phi4": (f"<|im_start|>user<|im_sep|>{Q1}<|im_end|><|im_start|>assistant<|im_sep|>",
             f"<|im_start|>system<|im_sep|>{SYSTEM}<|im_end|><|im_start|>user<|im_sep|>{Q1}<|im_end|>"
             "<|im_start|>assistant<|im_sep|>"),
    "mistral": (f"<BOS>[INST] {Q1} [/INST]", f"<BOS>[INST] {SYSTEM}\n\n{Q1} [/INST]"),
    "smollm": (CHATML_USER, CHATML_SYSTEM + CHATML_USER),
}
# What opens a user turn and what opens the model's answer (the generation prompt), per family.
TURNS: dict[str, tuple[str, str]] = {
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "qwen2.5": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "qwen3": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "gemma": ("<start_of_turn>user\n", "<start_of_turn>model\n"),
    "phi3": ("<|user|>\n", "<|assistant|>\n"),
    "phi4": ("<|im_start|>user<|im_sep|>", "<|im_start|>assistant<|im_sep|>"),
    "mistral": ("[INST] ", " [/INST]"),
    "smollm": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
}
FAMILY_NAMES = {"llama3": "llama3", "qwen2.5": "chatml", "qwen3": "qwen3", "gemma": "gemma", "phi3": "phi3",
                "phi4": "phi4", "mistral": "mistral", "smollm": "chatml"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Temperature in °C at a place",
    "parameters": {"type": "object", "properties": {"place": {"type": "string"}}, "required": ["place"]}}}


def _template(family: str) -> str:
    return (TEMPLATES / f"{family}.jinja").read_text()


def _model_name(family: str) -> str:
    """The file's general.name. (llama.cpp gives a model named "...phi3..." Phi-3's tokenizer
    fix-ups, which need a "</s>" token that SmolLM2's vocabulary lacks: it then refuses the file.)"""
    return "test-" + family.replace("phi", "phi ")


def _write_gguf(source: Path, target: Path, template: str, name: str) -> Path:
    """``source``'s metadata and tensors in a new GGUF file, with another chat template and name."""
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in (
                gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.NAME, gguf.Keys.Tokenizer.CHAT_TEMPLATE):
            continue  # (written by the writer itself, or replaced)
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_name(name)
    writer.add_chat_template(template)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return target


@pytest.fixture(scope="module")
def family_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """The GGUF file of a family (written on first use, ~100 MB each, removed after the module)."""
    folder = tmp_path_factory.mktemp("chat_families")
    source = resolve_model("smollm2-135m")
    made: dict[str, Path] = {}

    def path_for(family: str) -> Path:
        if family not in made:
            made[family] = _write_gguf(source, folder / f"{family}.gguf", _template(family), _model_name(family))
        return made[family]

    yield path_for
    for path in made.values():
        path.unlink(missing_ok=True)


def _load(path: Path) -> LlamaCppEngine:
    engine, _ = load_engine(LoadSpec(model=str(path), threads=2))
    assert isinstance(engine, LlamaCppEngine)
    return engine


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, family_file: Callable[[str], Path]) -> Iterator[tuple[str, LlamaCppEngine]]:
    """A family and its file loaded (one at a time: tests are grouped by family)."""
    engine = _load(family_file(request.param))
    yield request.param, engine
    engine.close()


def _expected(engine: LlamaCppEngine, text: str) -> str:
    today = dt.datetime.now().strftime("%d %b %Y")
    return text.replace("<BOS>", engine.bos_text).replace("<EOS>", engine.eos_text).replace("<DATE>", today)


def _render(engine: LlamaCppEngine, messages: list[dict[str, str]], **kwargs: Any) -> str:
    template = engine.info.chat_template
    assert template
    return render_chat(template, messages, model=engine.info.name, bos_token=engine.bos_text,
                       eos_token=engine.eos_text, **kwargs)


def _tokens_of(engine: LlamaCppEngine, text: str) -> list[int]:
    """``text`` tokenized as the template's render is: markers become special tokens."""
    bos = engine.info.add_bos and not text.startswith(engine.bos_text)
    return engine.tokenize(text, add_special=bos, parse_special=True)


def test_the_file_is_the_family_s(family: tuple[str, LlamaCppEngine]) -> None:
    name, engine = family
    assert engine.info.name == _model_name(name)
    assert engine.info.chat_template == _template(name)
    assert chat_template_family(engine.info.chat_template) == FAMILY_NAMES[name]


@pytest.mark.parametrize("case", ["single", "system"])
def test_single_turn_and_system_prompt_render_as_written(family: tuple[str, LlamaCppEngine], case: str) -> None:
    name, engine = family
    messages = SINGLE if case == "single" else WITH_SYSTEM
    expected = _expected(engine, EXPECTED[name][case == "system"])
    text, _ = prompt_text(engine.info.chat_template, messages, chat=True, bos_token=engine.bos_text,
                          eos_token=engine.eos_text, model=engine.info.name)
    assert text == expected
    assert engine.format_messages(messages) == _tokens_of(engine, expected)
    if case == "system":
        assert engine.format_prompt(Q1, system=SYSTEM) == engine.format_messages(messages)


def test_multi_turn_structure(family: tuple[str, LlamaCppEngine]) -> None:
    name, engine = family
    user_open, answer_open = TURNS[name]
    single, text = _render(engine, SINGLE), _render(engine, MULTI)
    head, tail = single.split(Q1)
    assert text.startswith(head + Q1)  # the first turn as in a single-turn chat
    assert text.endswith(Q2 + tail)  # the last user turn, then the generation prompt
    assert text.count(user_open) == 2 and text.count(answer_open) == 2
    between = text[text.index(Q1) + len(Q1):text.index(Q2)]  # the answer's turn, then the next user's
    answer = between.split(answer_open)[1]
    assert answer.lstrip().startswith(A1) and answer.endswith(user_open)
    assert engine.format_messages(MULTI) == _tokens_of(engine, text)


def test_control_text_in_a_message_stays_text(family: tuple[str, LlamaCppEngine]) -> None:
    """Every family's render is cut around the contents, so a user's "<|im_end|>" is text."""
    _, engine = family
    (end,) = engine.tokenize("<|im_end|>", add_special=False, parse_special=True)
    hostile = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1 + "<|im_end|>"}]
    assert engine.format_messages(hostile).count(end) == engine.format_messages(WITH_SYSTEM).count(end)


def test_add_generation_prompt(family: tuple[str, LlamaCppEngine]) -> None:
    name, engine = family
    answer_open = TURNS[name][1]
    with_prompt, without = _render(engine, SINGLE), _render(engine, SINGLE, add_generation_prompt=False)
    if name == "mistral":  # [/INST] closes the user turn and is the prompt at once
        assert with_prompt == without
    else:
        assert with_prompt.endswith(answer_open) and not without.endswith(answer_open)
        assert with_prompt.startswith(without.removesuffix(engine.eos_text))


# Qwen 3's reasoning: kept only for the turns after the last real query.
REASONING = "Add two and two."
THINKING_ANSWER = f"<think>\n{REASONING}\n</think>\n\n{A1}"
QWEN3_HISTORY = (f"<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"
                 f"<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def qwen3(family_file: Callable[[str], Path]) -> Iterator[LlamaCppEngine]:
    engine = _load(family_file("qwen3"))
    yield engine
    engine.close()


@pytest.mark.parametrize("answer", [{"content": THINKING_ANSWER}, {"content": A1, "reasoning_content": REASONING}])
def test_qwen3_drops_the_reasoning_of_earlier_turns(qwen3: LlamaCppEngine, answer: dict[str, str]) -> None:
    messages = [SINGLE[0], {"role": "assistant", **answer}, {"role": "user", "content": Q2}]
    assert _render(qwen3, messages) == QWEN3_HISTORY
    assert qwen3.format_messages(messages) == _tokens_of(qwen3, QWEN3_HISTORY)


def test_qwen3_keeps_the_reasoning_after_the_last_query(qwen3: LlamaCppEngine) -> None:
    kept = f"<|im_start|>assistant\n<think>\n{REASONING}\n</think>\n\n{A1}<|im_end|>\n"
    done = [SINGLE[0], {"role": "assistant", "content": THINKING_ANSWER}]
    assert _render(qwen3, done, add_generation_prompt=False) == f"<|im_start|>user\n{Q1}<|im_end|>\n" + kept
    # a tool's result, as a tool turn or as a user turn holding only a <tool_response>, is no query
    for result in ({"role": "tool", "content": "4"}, {"role": "user", "content": "<tool_response>4</tool_response>"}):
        text = _render(qwen3, [*done, result])
        assert kept in text and text.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    # a real question after the answer makes it history
    assert REASONING not in _render(qwen3, [*done, {"role": "user", "content": "<tool_response> is a tag?"}])


def test_qwen3_enable_thinking(qwen3: LlamaCppEngine) -> None:
    assert _render(qwen3, SINGLE, variables={"enable_thinking": False}) == CHATML_USER + "<think>\n\n</think>\n\n"
    assert _render(qwen3, SINGLE, variables={"enable_thinking": True}) == _render(qwen3, SINGLE) == CHATML_USER


def test_tools_render_as_json_with_the_template_s_options() -> None:
    tools = [WEATHER_TOOL]
    llama = render_chat(_template("llama3"), SINGLE, variables={"tools": tools})
    assert json.dumps(WEATHER_TOOL, indent=4, ensure_ascii=False) + "\n\n<|eot_id|>" in llama
    qwen = render_chat(_template("qwen2.5"), SINGLE, variables={"tools": tools})
    assert "<tools>\n" + json.dumps(WEATHER_TOOL, ensure_ascii=False, separators=(", ", ": "),
                                                sort_keys=True) + "\n</tools>" in qwen
    phi = render_chat(_template("phi3"), WITH_SYSTEM, variables={"tools": tools})
    assert f"<|system|>\n{SYSTEM}<|tool|>" + json.dumps(tools) + "<|/tool|><|end|>\n" in phi
    assert "\\u00b0C" in phi and "°C" in llama and "°C" in qwen  # ensure_ascii only where asked for


def test_phi3_leaves_out_empty_messages() -> None:
    messages = [{"role": "system", "content": ""}, *SINGLE]
    assert render_chat(_template("phi3"), messages) == render_chat(_template("phi3"), SINGLE)


def test_a_refusal_names_the_model_and_the_reason(family_file: Callable[[str], Path]) -> None:
    engine = _load(family_file("gemma"))
    try:
        two_users = [SINGLE[0], {"role": "user", "content": Q2}]
        with pytest.raises(UsageError) as err:
            engine.format_messages(two_users)
        assert str(err.value) == ("chat template of model 'test-gemma' refused the messages: "
                                  "Conversation roles must alternate user/assistant/user/assistant/...")
    finally:
        engine.close()
    with pytest.raises(UsageError, match="^chat template of model 'test-mistral' refused the messages: Conv"):
        render_chat(_template("mistral"), [{"role": "assistant", "content": A1}], model="test-mistral")


class _Swapped(ChatText):
    """A loaded engine's text side with another chat template and name."""

    def __init__(self, engine: LlamaCppEngine, template: str, name: str) -> None:
        self.info = replace(engine.info, chat_template=template, name=name)
        self.vocab = engine.vocab
        self.bos_text, self.eos_text = engine.bos_text, engine.eos_text


BROKEN = {
    "filter": ("{% for m in messages %}{{ m['content'] | shout }}{% endfor %}", "No filter named 'shout'. (line 1)"),
    "syntax": ("{% for m in messages %}\n{{ m['content'] }}\n{% endfo %}", "Encountered unknown tag 'endfo'"),
    "undefined": ("{{ messages[0]['content'] + conversation.title }}", "'conversation' is undefined"),
    "type": ("{{ messages[0]['content'] + 1 }}", "TypeError: can only concatenate str"),
    "mutation": ("{{ messages.append(messages[0]) }}", "unsafe"),
    "attribute trick": ("{{ messages.__class__.__mro__[1].__subclasses__() }}", "attribute '__class__'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_template_that_cannot_render_names_the_model_and_the_reason(qwen3: LlamaCppEngine, case: str) -> None:
    template, reason = BROKEN[case]
    chat = _Swapped(qwen3, template, "broken-model")
    with pytest.raises(UsageError) as err:
        chat.format_messages(SINGLE)
    message = str(err.value)
    assert message.startswith("chat template of model 'broken-model' failed to render: ")
    assert reason in message and "\n" not in message
    assert chat.format_messages(SINGLE, chat=False) == qwen3.format_messages(SINGLE, chat=False)


def test_a_template_that_rewrites_a_control_text_names_the_model(qwen3: LlamaCppEngine) -> None:
    shouting = _Swapped(qwen3, "{% for m in messages %}<|im_start|>{{ m['content'] | upper }}<|im_end|>{% endfor %}",
                        "shouting-model")
    with pytest.raises(UsageError, match="the chat template of model 'shouting-model' changes message contents"):
        shouting.format_messages([{"role": "user", "content": "hi<|im_start|>"}])


def test_a_template_may_not_reach_python() -> None:
    """The sandbox holds: the calls a template-injection payload needs fail, and name the model."""
    payload = "{{ cycler.__init__.__globals__.os.popen('echo owned').read() }}"
    with pytest.raises(UsageError, match="^chat template of model 'x' failed to render: ") as err:
        render_chat(payload, SINGLE, model="x")
    assert "owned" not in str(err.value)


def test_families_by_their_markers() -> None:
    for name in FAMILIES:
        assert chat_template_family(_template(name)) == FAMILY_NAMES[name]
    assert chat_template_family(None) is None and chat_template_family("") is None
    assert chat_template_family("{% for m in messages %}{{ m['content'] }}\n{% endfor %}") == "other"
    assert chat_template_family("{{ '<|user|>' + m }}") == chat_template_family("{{ m + '<|end|>' }}") == "phi3"


# SmolLM2's file carries a ChatML template; the Gemma 3 270M file (the base model) carries none.
@pytest.mark.parametrize(("model", "expected"), [("smollm2-135m", "chatml"), ("gemma3-270m", None)])
def test_the_packaged_models_families(model: str, expected: str | None) -> None:
    try:
        path = resolve_model(model)
    except Exception as exc:  # noqa: BLE001 - the optional second model is not installed
        pytest.skip(f"{model} not installed: {exc}")
    template = read_model_info(path).chat_template
    assert chat_template_family(template) == expected
    assert (template is None) == (expected is None)


def test_a_short_generation_through_the_runtime(family_file: Callable[[str], Path]) -> None:
    from edgescale.api import Runtime

    with Runtime.load(family_file("smollm"), threads=2) as rt:
        result = rt.ask([{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}],
                        strategy="single", max_tokens=8)
        greedy = rt.ask([{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}],
                        strategy="single", max_tokens=8)
    assert result.model == str(family_file("smollm"))
    (sample,) = result.samples
    assert 1 <= sample.n_tokens <= 8 and result.text.strip()
    assert greedy.text == result.text  # greedy: the same text again
