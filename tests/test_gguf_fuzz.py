"""Fuzz the GGUF header reader with mutated bytes of the real model's header.

Whatever the bytes, reading a model's metadata ends in a ModelInfo or a clean
InvalidModelFile: never another exception, never a hang. Each example writes
the (mutated) header of the packaged SmolLM2 file and extends it with a sparse
hole to the original size, so the tensor-data checks see a file of the real
length. `python bench/fuzz_gguf.py` runs the same mutations much longer.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgescale.errors import InvalidModelFile
from edgescale.models.gguf_file import read_header
from edgescale.models.info import ModelInfo, model_info_from_header

# Where the structure is: the counts and the first records lie in the first KiB;
# 64 KiB covers the metadata keys and the start of the vocabulary.
HOT = 1024
WARM = 64 * 1024


@pytest.fixture(scope="module")
def original(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The real header's bytes in a file (a path, so a failing example prints short) and the model's size."""
    header = read_header(model_path)
    data_start = min(t.offset for t in header.tensors)
    out = tmp_path_factory.mktemp("gguf") / "header.bin"
    with model_path.open("rb") as fh:
        out.write_bytes(fh.read(data_start))
    return out, header.file_size


def mutate(head: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(head)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


def read_mutant(path: Path, data: bytes, size: int) -> ModelInfo | InvalidModelFile:
    with path.open("wb") as fh:
        fh.write(data)
        fh.truncate(max(size, len(data)))  # a sparse hole where the weights were
    try:
        return model_info_from_header(read_header(path))
    except InvalidModelFile as exc:
        return exc


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hang


@pytest.fixture
def watchdog() -> Iterator[None]:
    """A mutant that makes the reader loop for more than 2 s fails the test as a hang."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


edit = st.tuples(st.one_of(st.integers(0, HOT), st.integers(0, WARM), st.integers(0, 1 << 21)),
                 st.integers(0, 255))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(edit, min_size=1, max_size=8), cut=st.one_of(st.none(), st.integers(0, WARM)))
def test_mutated_headers_give_a_model_or_a_clean_error(original, tmp_path: Path, watchdog, edits, cut) -> None:
    head_file, size = original
    head = head_file.read_bytes()
    signal.alarm(2)
    try:
        got = read_mutant(tmp_path / "mutant.gguf", mutate(head, edits, cut), size)
    except _Hang:
        pytest.fail(f"reader hung on edits={edits} cut={cut}")
    finally:
        signal.alarm(0)
    assert isinstance(got, (ModelInfo, InvalidModelFile))
    if isinstance(got, InvalidModelFile):
        assert "\n" not in str(got) and str(got).startswith(str(tmp_path / "mutant.gguf"))
    else:  # a mutant that still reads is a model the planner can use
        assert got.n_layer >= 1 and got.n_embd >= 1 and got.n_head >= 1 and len(got.n_head_kv) == got.n_layer
        assert got.head_dim_k >= 1 and got.head_dim_v >= 1 and got.n_vocab >= 1


def test_the_unmutated_header_reads_as_the_real_model(original, tmp_path: Path) -> None:
    head_file, size = original
    got = read_mutant(tmp_path / "copy.gguf", head_file.read_bytes(), size)
    assert isinstance(got, ModelInfo) and got.n_layer == 30 and got.n_vocab == 49152
