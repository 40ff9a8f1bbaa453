"""The ONNX backend's parts that need no model: KV rows, byte alphabet, model config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgescale.errors import ContextOverflow, InvalidModelFile, KVCacheFull
from edgescale.runtime.onnx_config import CONFIG_NAME, OnnxModelConfig
from edgescale.runtime.onnx_kv import KVRows
from edgescale.runtime.onnx_tokenizer import byte_level_alphabet


def _rows(n_slots: int = 4, max_cells: int = 1000) -> KVRows:
    return KVRows(n_layer=2, n_kv_head=1, head_dim=2, n_slots=n_slots, max_cells=max_cells)


def _fill(kv: KVRows, seq: int, n: int, value: float) -> None:
    slot = kv.slot_of[seq]
    start = kv.length(seq)
    kv.ensure_capacity(start + n)
    kv.buf[:, :, slot, :, start : start + n] = value
    kv.advance(seq, n)


def _content(kv: KVRows, seq: int) -> np.ndarray:
    return kv.buf[:, :, kv.slot_of[seq], :, : kv.length(seq)].copy()


def test_rows_copy_and_account_their_cells() -> None:
    kv = _rows()
    for s in (0, 1, 2):
        kv.attach(s)
    _fill(kv, 0, 5, 1.0)
    kv.fill_from(0, [0, 1, 2])
    assert [kv.length(s) for s in (0, 1, 2)] == [5, 5, 5]
    assert kv.cells_used() == 15  # the prompt is stored once per row
    _fill(kv, 1, 2, 7.0)
    kv.detach(2)
    assert kv.cells_used() == 12 and not kv.holds(2)
    np.testing.assert_array_equal(_content(kv, 0), 1.0)
    assert float(_content(kv, 1)[..., 5:, :].min()) == 7.0


def test_window_is_free_when_rows_are_adjacent_and_moves_rows_otherwise() -> None:
    kv = _rows()
    for s, v in zip((10, 11, 12, 13), (1.0, 2.0, 3.0, 4.0)):
        kv.attach(s)
        _fill(kv, s, 3 + int(v), v)
    before = {s: _content(kv, s) for s in (10, 11, 12, 13)}
    assert kv.window([11, 12]) == (1, None)
    start, order = kv.window([12, 11])
    assert start == 1 and order is not None and list(order) == [1, 0]
    assert kv.rows_moved == 0
    start, order = kv.window([10, 13])  # not adjacent: rows move, contents follow them
    slots = sorted(kv.slot_of[s] for s in (10, 13))
    assert slots[1] - slots[0] == 1 and start == slots[0]
    assert kv.rows_moved > 0
    for s, c in before.items():
        np.testing.assert_array_equal(_content(kv, s), c)
    rows = order if order is not None else np.arange(2)
    assert [kv.slot_of[s] - start for s in (10, 13)] == list(rows)


def test_capacity_grows_keeping_contents_and_respects_the_model_limit() -> None:
    kv = _rows(max_cells=300)
    kv.attach(0)
    _fill(kv, 0, 10, 5.0)
    gen = kv.generation
    kv.ensure_capacity(200)
    assert kv.cap >= 200 and kv.generation > gen
    np.testing.assert_array_equal(_content(kv, 0), 5.0)
    with pytest.raises(ContextOverflow):
        kv.ensure_capacity(301)


def test_slots_run_out_with_a_typed_error() -> None:
    kv = _rows(n_slots=2)
    kv.attach(0)
    kv.attach(1)
    with pytest.raises(KVCacheFull):
        kv.attach(2)
    kv.detach(0)
    assert kv.attach(2) == 0


def test_byte_level_alphabet_covers_every_byte_once() -> None:
    table = byte_level_alphabet()
    assert sorted(table.values()) == list(range(256))
    assert table["A"] == ord("A") and table["\u0120"] == ord(" ")  # GPT-2's 'Ġ' is the space


def _config(**over: object) -> OnnxModelConfig:
    base: dict[str, object] = {
        "name": "m",
        "architecture": "llama",
        "source_file": "m.gguf",
        "source_quant": "Q4_1",
        "n_params": 10,
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 2,
        "n_head_kv": 1,
        "head_dim": 32,
        "n_vocab": 100,
        "n_ctx_train": 512,
        "max_positions": 512,
        "sliding_window": 0,
        "kv_layout": "gqa-shared",
        "kv_dtype": "f32",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "eog_token_ids": (2,),
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos": False,
        "chat_template": None,
    }
    base.update(over)
    return OnnxModelConfig(**base)  # type: ignore[arg-type]


def test_config_round_trips_and_builds_model_info(tmp_path: Path) -> None:
    cfg = _config()
    cfg.write(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"x" * 100)
    back = OnnxModelConfig.read(tmp_path)
    assert back == cfg
    info = back.model_info(tmp_path)
    assert info.n_head_kv == (1, 1) and info.head_dim_k == 32 and info.file_size == 100
    assert info.kv_bytes(10, "f32", "f32") == 2 * 10 * 1 * 32 * 8


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "no edgescale_onnx.json"),
        ("{not json", "unreadable"),
        ('{"format": "other"}', "not an edgescale-onnx"),
        ('{"format": "edgescale-onnx", "format_version": 1}', "incomplete"),
    ],
)
def test_bad_configs_are_refused_in_one_line(
    tmp_path: Path, content: str | None, match: str
) -> None:
    if content is not None:
        (tmp_path / CONFIG_NAME).write_text(content)
    with pytest.raises(InvalidModelFile, match=match) as err:
        OnnxModelConfig.read(tmp_path)
    assert "\n" not in str(err.value)


def test_unknown_kv_layout_is_refused(tmp_path: Path) -> None:
    data = json.loads(_config().to_json())
    data["kv_layout"] = "paged"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(InvalidModelFile, match="KV layout"):
        OnnxModelConfig.read(tmp_path)
