"""Scoring a prompt (OpenAI's echo with logprobs): logits on every position, the same numbers the
step loop reports for the tokens it samples, on both backends."""

from __future__ import annotations

from typing import Any

import pytest

from edgescale.runtime.token_logprobs import prompt_logprobs
from tests.test_onnx_backend import converted, onnx_engine, smollm2_gguf  # noqa: F401  (fixtures)

PROMPT = "The capital of France is"


def test_a_prompts_scores_are_the_loops_logprobs(runtime: Any, engine: Any) -> None:
    result = runtime.ask(PROMPT, max_tokens=8, top_logprobs=2)
    sample = result.samples[0]
    assert sample.logprobs is not None and len(sample.logprobs) == sample.n_tokens
    prompt = runtime.prompt_tokens(PROMPT)
    full = prompt + [t.token for t in sample.logprobs]
    scored = runtime.scheduler.call(lambda eng: prompt_logprobs(eng, full, 2)).result()
    assert len(scored) == len(full) and scored[0].logprob is None
    for got, want in zip(scored[len(prompt):], sample.logprobs):
        assert got.token == want.token and got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert [a.token for a in got.top] == [a.token for a in want.top]
    assert all(e.logprob is not None and e.logprob <= 0 for e in scored[1:])


def test_no_logprobs_unless_asked(runtime: Any) -> None:
    assert runtime.ask(PROMPT, max_tokens=4).samples[0].logprobs is None


def test_the_onnx_backend_scores_the_same_prompt(onnx_engine: Any, engine: Any) -> None:  # noqa: F811
    tokens = engine.tokenize("One, two, three, four, five", add_special=False)
    llama = prompt_logprobs(engine, tokens)
    onnx = prompt_logprobs(onnx_engine, tokens)
    assert [e.token for e in onnx] == tokens and onnx[0].logprob is None
    # int8 matmuls against llama.cpp's Q4_1 kernels: close, not equal
    assert [e.logprob for e in onnx[1:]] == pytest.approx([e.logprob for e in llama[1:]], abs=0.5)
