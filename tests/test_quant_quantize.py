"""llama.cpp's quantiser through ``quant.quantize``, and the quality report on its output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgescale.errors import ModelNotFound, UsageError
from edgescale.evals.quality import greedy_agreement, perplexity, quality_report
from edgescale.quant.quantize import FTYPES, QuantizeReport, ftype_of, quantize
from edgescale.runtime.llama_engine import LlamaCppEngine


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    from edgescale.models.catalog import resolve_model

    try:
        return resolve_model("smollm2-135m")
    except ModelNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def q4_0(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> QuantizeReport:
    return quantize(
        smollm2_gguf, tmp_path_factory.mktemp("quant") / "smollm2-q4_0.gguf", "q4_0", n_threads=1
    )


def test_requantizing_q4_1_to_q4_0_works_and_warns(q4_0: QuantizeReport) -> None:
    assert q4_0.src_quant == "Q4_1" and q4_0.dst_quant == "Q4_0" and q4_0.qtype == "Q4_0"
    assert q4_0.requantized and q4_0.warning and "already quantised" in q4_0.warning
    assert 0.5 < q4_0.ratio < 1.0
    with LlamaCppEngine.load(q4_0.dst, n_threads=1) as engine:
        assert engine.info.quant == "Q4_0"
        s = engine.session(n_seqs=1, n_cells=64, max_batch=32)
        row = np.array(s.prefill(engine.format_prompt("Hi"), [0]))
        s.close()
    assert np.isfinite(row).all()


def test_quality_report_shows_what_q4_0_costs(q4_0: QuantizeReport, smollm2_gguf: Path) -> None:
    report = quality_report(
        q4_0.dst,
        smollm2_gguf,
        n_threads=1,
        max_tokens=256,
        prompts=("What is the capital of France?", "List three colors."),
        n_tokens=12,
    )
    assert report.reference_ppl is not None and report.agreement is not None
    assert report.candidate_ppl.tokens == report.reference_ppl.tokens > 0
    assert report.candidate_backend == report.reference_backend == "llama.cpp"
    # A second rounding costs something, but the model is still the same model.
    assert 0.9 < report.candidate_ppl.ppl / report.reference_ppl.ppl < 1.6
    assert 0.3 <= report.agreement.teacher_forced_top1 <= 1.0
    assert "perplexity" in report.summary() and "greedy agreement" in report.summary()
    # The reference is a GGUF: the report says how far llama.cpp's two attention kernels drift apart.
    assert report.floor is not None and report.floor.prompts == 2 and "noise floor" in report.summary()
    assert 0.5 <= report.floor.teacher_forced_top1 <= 1.0


def test_an_engine_agrees_with_itself(smollm2_gguf: Path) -> None:
    with LlamaCppEngine.load(smollm2_gguf, n_threads=1) as engine:
        a = greedy_agreement(engine, engine, ("Say hello.",), n_tokens=8)
        p1 = perplexity(engine, rows=2, max_tokens=64)
        p2 = perplexity(engine, rows=2, max_tokens=64)
    assert a.identical == 1 and a.teacher_forced_top1 == 1.0 and a.max_abs_logit_diff == 0.0
    assert p1 == p2 and p1.tokens == 2 * 31 and np.isfinite(p1.nll)


def test_bad_requests_are_usage_errors(smollm2_gguf: Path, tmp_path: Path) -> None:
    assert ftype_of("q4_k_m") == FTYPES["Q4_K_M"] == 15
    with pytest.raises(UsageError, match="unknown quantisation type"):
        quantize(smollm2_gguf, tmp_path / "x.gguf", "Q3_X", n_threads=1)
    with pytest.raises(UsageError, match="differ"):
        quantize(smollm2_gguf, smollm2_gguf, "Q4_0", n_threads=1)
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"")
    with pytest.raises(UsageError, match="exists"):
        quantize(smollm2_gguf, existing, "Q4_0", n_threads=1)
    with pytest.raises(UsageError):
        quantize(smollm2_gguf, tmp_path / "y.gguf", "Q4_0", n_threads=0)
