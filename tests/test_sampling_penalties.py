"""OpenAI's penalties and logit bias as sampler stages: exact on toy rows, then on the real model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edgescale.errors import UsageError
from edgescale.runtime.sampling import (
    SamplingConfig,
    apply_logit_bias,
    apply_penalties,
    make_adjuster,
    top_logprobs,
)
from edgescale.settings import API_NAMES, ask_settings, logit_bias_pairs, sampling_extras

ROW = np.array([1.0, 2.0, 3.0, 4.0, 0.5], dtype=np.float32)


def test_penalties_follow_openais_formula_exactly() -> None:
    counts = {3: 2, 1: 1}  # token 3 twice, token 1 once
    out = apply_penalties(ROW.copy(), counts, frequency=0.5, presence=0.25)
    # logit[j] -= c[j] * 0.5 + (c[j] > 0) * 0.25
    assert out.tolist() == [1.0, 2.0 - 0.5 - 0.25, 3.0, 4.0 - 1.0 - 0.25, 0.5]


def test_negative_penalties_favour_repeats() -> None:
    out = apply_penalties(ROW.copy(), {0: 3}, frequency=-1.0, presence=-0.5)
    assert out.tolist() == [1.0 + 3.0 + 0.5, 2.0, 3.0, 4.0, 0.5]


def test_logit_bias_adds_and_copies() -> None:
    out = apply_logit_bias(ROW, np.array([3, 4]), np.array([-100.0, 10.0], dtype=np.float32))
    assert out.tolist() == [1.0, 2.0, 3.0, -96.0, 10.5]
    assert ROW.tolist() == [1.0, 2.0, 3.0, 4.0, 0.5]  # the model's row is untouched (other samples read it)


def test_the_adjuster_composes_bias_then_penalties_and_leaves_the_row() -> None:
    cfg = SamplingConfig(temperature=0.0, frequency_penalty=1.0, presence_penalty=0.5, logit_bias=((0, 2.0),))
    adjust = make_adjuster(cfg)
    assert adjust is not None
    out = adjust(ROW, {0: 1, 3: 1})
    assert out.tolist() == [1.0 + 2.0 - 1.5, 2.0, 3.0, 4.0 - 1.5, 0.5]
    assert ROW.tolist() == [1.0, 2.0, 3.0, 4.0, 0.5]
    assert make_adjuster(SamplingConfig()) is None  # nothing asked: no stage, no cost


def test_top_logprobs_are_the_rows_log_softmax() -> None:
    lse = float(np.log(np.exp(ROW.astype(np.float64)).sum()))
    top = top_logprobs(ROW, lse, 2, float(ROW.max()))
    assert [t for t, _ in top] == [3, 2]
    assert top[0][1] == pytest.approx(4.0 - lse) and top[1][1] == pytest.approx(3.0 - lse)


@pytest.mark.parametrize("value, pairs", [
    ({"5": -100, "2": 3.5}, ((2, 3.5), (5, -100.0))),
    ("7=-100, 1=2", ((1, 2.0), (7, -100.0))),
    ([[3, 1]], ((3, 1.0),)),
    (None, ()),
])
def test_logit_bias_forms(value: Any, pairs: tuple[tuple[int, float], ...]) -> None:
    assert logit_bias_pairs(value) == pairs


@pytest.mark.parametrize("kwargs, fragment", [
    ({"logit_bias": {"x": 1}}, "not a token id"),
    ({"logit_bias": {"3": 101}}, "between -100 and 100"),
    ({"logit_bias": "3:1"}, "TOKEN_ID=BIAS"),
    ({"frequency_penalty": 2.5}, "frequency_penalty must be between -2 and 2"),
    ({"presence_penalty": -3}, "presence_penalty must be between -2 and 2"),
    ({"top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
])
def test_bad_values_are_one_line_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        sampling_extras(API_NAMES, **kwargs)


def test_settings_carry_them_to_the_sampling_config() -> None:
    s = ask_settings(frequency_penalty=0.5, presence_penalty=0.25, logit_bias={"4": -100})
    cfg = s.options.sampling_for(s.strategy)
    assert (cfg.frequency_penalty, cfg.presence_penalty, cfg.logit_bias) == (0.5, 0.25, ((4, -100.0),))


# -- the real model ---------------------------------------------------------------------------
PROMPT = "Count: 1, 2, 3, 4, 5, 6, 7, 8"


def _asked(runtime: Any, **kwargs: Any) -> tuple[Any, dict[int, list[int]]]:
    """The result and every token each sample drew (end-of-text included)."""
    drawn: dict[int, list[int]] = {}

    def on_step(gen: Any, events: Any) -> None:
        for ev in events:
            drawn.setdefault(ev.index, []).append(ev.token)

    return runtime.ask(PROMPT, on_step=on_step, **kwargs), drawn


def test_a_banned_token_never_appears(runtime: Any) -> None:
    free, drawn = _asked(runtime, max_tokens=12)
    banned = set(drawn[0])
    bias = {str(t): -100 for t in banned}
    kept, drawn = _asked(runtime, max_tokens=12, logit_bias=bias, strategy="maj@4", temperature=1.0, top_k=0,
                         top_p=1.0, min_p=0.0)
    assert len(drawn) == 4 and all(drawn.values())
    for tokens in drawn.values():
        assert not set(tokens) & banned
    assert kept.samples[0].text != free.text


def test_a_strong_penalty_changes_greedy_text(runtime: Any) -> None:
    plain = runtime.ask(PROMPT, max_tokens=24)
    penalised = runtime.ask(PROMPT, max_tokens=24, frequency_penalty=2.0, presence_penalty=2.0)
    again = runtime.ask(PROMPT, max_tokens=24, frequency_penalty=2.0, presence_penalty=2.0)
    assert plain.text and penalised.text != plain.text
    assert penalised.text == again.text  # greedy with penalties is still deterministic
    zero = runtime.ask(PROMPT, max_tokens=24, frequency_penalty=0.0, presence_penalty=0.0)
    assert zero.text == plain.text  # neutral values change nothing


def test_a_token_id_outside_the_vocabulary_is_refused(runtime: Any, engine: Any) -> None:
    with pytest.raises(UsageError, match="not in the model's vocabulary"):
        runtime.ask(PROMPT, max_tokens=4, logit_bias={str(engine.info.n_vocab): -100})


# -- the command line -------------------------------------------------------------------------
def test_cli_flags_reach_the_sampler(engine: Any) -> None:
    from tests.test_cli import assert_one_line_error, cli

    comma = engine.tokenize(",", add_special=False, parse_special=False)[0]
    plain = cli("run", "--raw", "-n", "12", "--json", PROMPT)
    banned = cli("run", "--raw", "-n", "12", "--json", "--logit-bias", f"{comma}=-100", "--frequency-penalty", "0.5",
                 PROMPT)
    assert plain.returncode == 0 and banned.returncode == 0, banned.stderr
    assert "," in json.loads(plain.stdout)["text"] and "," not in json.loads(banned.stdout)["text"]
    batch = cli("batch", "-n", "12", "--raw", "--logit-bias", f"{comma}=-100", stdin=json.dumps({"prompt": PROMPT}))
    assert batch.returncode == 0 and "," not in json.loads(batch.stdout)["text"]
    assert_one_line_error(cli("run", "--presence-penalty", "5", "hi"), 2, "--presence-penalty must be between")
    assert_one_line_error(cli("run", "--logit-bias", "3:1", "hi"), 2, "--logit-bias takes TOKEN_ID=BIAS")


def test_a_batch_line_carries_its_own_penalties_and_bias() -> None:
    from edgescale.settings import settings_from_record

    s = settings_from_record({"prompt": "hi", "frequency_penalty": 1, "logit_bias": {"7": -100}},
                             {"presence_penalty": 0.5})
    assert (s.options.frequency_penalty, s.options.presence_penalty, s.options.logit_bias) == (1.0, 0.5, ((7, -100.0),))
    with pytest.raises(UsageError, match="field 'presence_penalty' must be between -2 and 2"):
        settings_from_record({"prompt": "hi", "presence_penalty": 9}, {})
