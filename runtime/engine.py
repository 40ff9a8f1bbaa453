"""The one Engine protocol every backend implements, and KV cell bookkeeping.

A backend loads a model and opens *decode sessions*: a KV cache sized for a
query, holding up to ``n_seq_max`` sequences that share the prompt's cells.
The generation layer (``runtime.generate``) drives a session; strategies drive
the generation layer and never see a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import numpy.typing as npt

from edgescale.errors import ContextOverflow, UsageError
from edgescale.models.info import ModelInfo
from edgescale.runtime.constraints import Vocab
from edgescale.runtime.kv_types import KvType

Logits = npt.NDArray[np.float32]
Feed = tuple[int, Sequence[int]]  # (sequence id, tokens to append)


class CellCount:
    """How a KV layout counts a query's cells (the planner's MemoryModel and a backend's
    MemoryLayout both have one). A query is counted by its samples (``n_seqs``), each of
    ``prompt_tokens + new_tokens``, and its probes: up to ``probe_slots`` at once, each
    adding ``probe_cells``. A probe is a fork into a spare sequence id, except with
    streams, where it runs in the sample's own stream and is cut off after."""

    prompt_per_sequence: bool  # True: every sequence's row stores its own copy of the prompt
    cell_pad: int  # the cache is rounded up to a multiple of this many cells
    streams: bool  # one stream per sequence, all of one size (each rounded up to cell_pad)

    def query_cells(self, *, prompt_tokens: int, n_seqs: int, new_tokens: int, probe_slots: int,
                    probe_cells: int) -> int:
        """Cells a query may fill (:func:`kv_cells` in this layout), unpadded."""
        return kv_cells(prompt_tokens=prompt_tokens, n_seqs=n_seqs, new_tokens=new_tokens, probe_slots=probe_slots,
                        probe_cells=probe_cells, prompt_per_sequence=self.prompt_per_sequence, streams=self.streams)

    def seq_ids(self, n_seqs: int, probe_slots: int) -> int:
        """Sequence ids a query takes: its samples, and a spare one per probe (not with streams)."""
        return n_seqs if self.streams else n_seqs + probe_slots

    def padded(self, cells: int) -> int:
        """Cells the backend allocates for a cache (or with streams, a stream) of ``cells``."""
        return -(-cells // self.cell_pad) * self.cell_pad

    def row_cells(self, *, prompt_tokens: int, new_tokens: int, probe_slots: int, probe_cells: int) -> int:
        """The longest row of a query: a sample's prompt and tokens, with a probe's tokens
        when it probes (what one stream must hold)."""
        return prompt_tokens + new_tokens + (probe_cells if probe_slots else 0)

    def kv_cells(self, *, prompt_tokens: int, n_seqs: int, new_tokens: int, probe_slots: int,
                 probe_cells: int) -> int:
        """Cells a cache of the query's own allocates: :meth:`query_cells` padded, or with
        streams one stream of its longest row for each sample."""
        if self.streams:
            row = self.row_cells(prompt_tokens=prompt_tokens, new_tokens=new_tokens, probe_slots=probe_slots,
                                 probe_cells=probe_cells)
            return n_seqs * self.padded(row)
        return self.padded(self.query_cells(prompt_tokens=prompt_tokens, n_seqs=n_seqs, new_tokens=new_tokens,
                                            probe_slots=probe_slots, probe_cells=probe_cells))

    def context_cells(self, *, prompt_tokens: int, n_seqs: int, new_tokens: int, probe_slots: int,
                      probe_cells: int) -> int:
        """What the model's context (its trained length) must hold: a query's cells in one
        cache, or with streams its longest row."""
        if self.streams:
            return self.row_cells(prompt_tokens=prompt_tokens, new_tokens=new_tokens, probe_slots=probe_slots,
                                  probe_cells=probe_cells)
        return self.query_cells(prompt_tokens=prompt_tokens, n_seqs=n_seqs, new_tokens=new_tokens,
                                probe_slots=probe_slots, probe_cells=probe_cells)


@dataclass(frozen=True)
class MemoryLayout(CellCount):
    """How a backend spends memory on a query: what the planner's memory model
    (runtime.memory) needs to predict a query's peak before running it."""

    kv_type: str = "f16"  # element type of keys and values (models.info.KV_TYPE_BYTES)
    prompt_per_sequence: bool = False  # True: every sequence's row stores its own copy of the prompt
    cell_pad: int = 1  # the cache is rounded up to a multiple of this many cells
    streams: bool = False  # one stream per sequence id (llama.cpp kv_unified=false)
    name: str = "unified"  # what session(kv_layout=...) calls it
    # Scratch memory of one decode call of n_batch tokens:
    # per_token x n_batch + per_token_sq x n_batch^2 (attention scores of a prompt chunk).
    compute_per_token: int = 0
    compute_per_token_sq: int = 0


def kv_cells(*, prompt_tokens: int, n_seqs: int, new_tokens: int, probe_slots: int, probe_cells: int,
             prompt_per_sequence: bool, streams: bool = False) -> int:
    """KV cells one query may fill at most (the one formula: the planner's plan, the
    scheduler's admission and a generator's own session all count with it): the prompt
    once (a unified cache, where samples share its cells) or once per row (a row holds
    its own copy; a probe's row copies its parent's, except with streams, where a probe
    runs in its sample's own row), every sample's new tokens, and each probe's own
    tokens. Unpadded: a cache rounds its whole size up (``padded``)."""
    if streams:
        return n_seqs * (prompt_tokens + new_tokens) + probe_slots * probe_cells
    if prompt_per_sequence:
        return (n_seqs + probe_slots) * (prompt_tokens + new_tokens) + probe_slots * probe_cells
    return prompt_tokens + n_seqs * new_tokens + probe_slots * probe_cells


@runtime_checkable
class DecodeSession(Protocol):
    """A KV cache sized for one query, shared by several sequences."""

    n_seq_max: int
    n_cells: int

    @property
    def probes_in_place(self) -> bool:
        """Whether a probe decodes in its sequence's own cells and is cut off (truncate) after."""

    def prefill(self, tokens: Sequence[int], seq_ids: Sequence[int]) -> Logits:
        """Decode the prompt once for all ``seq_ids``; return the last position's logits (V,)."""

    def decode(self, feeds: Sequence[Feed]) -> Logits:
        """Append each feed's tokens to its sequence in one batch; return (len(feeds), V)
        logits of each feed's last token. The rows stay valid until the next call."""

    def decode_all(self, seq_id: int, tokens: Sequence[int]) -> Logits:
        """Append ``tokens`` to ``seq_id`` and return the logits of every one of them,
        (len(tokens), V), a copy (scoring a prompt: OpenAI's ``echo`` with ``logprobs``)."""

    def remove(self, seq_id: int) -> None:
        """Drop a sequence; cells no other sequence uses are freed at once."""

    def fork(self, src: int, dst: int, n_tokens: int | None = None) -> None:
        """Make ``dst`` a copy of ``src``'s first ``n_tokens`` positions (None: all of it), sharing
        its cells where the backend can (no copy of data); ``dst`` must hold nothing."""

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        """Drop ``seq_id``'s positions from ``n_tokens`` on (a probe run in place; only where
        ``probes_in_place``)."""

    def retains(self, seq_id: int) -> bool:
        """Whether cells of an ended ``seq_id`` are still kept (llama.cpp's parked cells): a new
        sequence on that id would free them first, which other sequences' order may not survive."""

    def cells_used(self) -> int: ...

    def kv_bytes_used(self) -> int: ...

    def kv_bytes_peak(self) -> int:
        """Most KV bytes the sequences of this session held at once."""

    def kv_bytes_allocated(self) -> int:
        """KV bytes the backend allocated for this session (what RSS pays)."""

    def set_abort_check(self, check: Callable[[], bool] | None) -> None:
        """Abort a running decode (raising DecodeAborted) when ``check()`` turns true."""

    def close(self) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """A loaded model. Everything the planner and the strategies read is declared here."""

    info: ModelInfo
    backend_name: str  # the registry name: "llama.cpp", "onnx"
    n_threads: int
    n_gpu_layers: int
    memory_layout: MemoryLayout  # the default of kv_layouts
    baseline_anon_bytes: int  # process memory besides the weights, measured right after loading

    @property
    def backend_version(self) -> str: ...

    @property
    def kv_layouts(self) -> Mapping[str, MemoryLayout]: ...  # the KV layouts session() can make, by name

    @property
    def max_sequences(self) -> int: ...  # sequence ids one session may hold at most

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def format_prompt(self, prompt: str, *, chat: bool = True, system: str | None = None) -> list[int]:
        """Prompt text -> tokens, through the model's chat template when ``chat``."""

    def format_messages(self, messages: Sequence[Mapping[str, str]], *, chat: bool = True,
                        tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Chat messages ({"role", "content"}) -> tokens, through the model's chat template
        when ``chat`` (else their contents, blank-line separated); ``tools``: OpenAI's function
        definitions, for a template that :meth:`renders_tools`."""

    def renders_tools(self, tools: Sequence[Mapping[str, Any]]) -> bool:
        """Whether the chat template shows these function definitions itself (else the caller
        offers them in a system message)."""

    def kv_type_refusal(self, kv: KvType) -> str | None:
        """Why sessions cannot keep their cache in ``kv`` (one line), or None."""

    def session(self, *, n_seqs: int, n_cells: int, max_batch: int, kv_layout: str | None = None,
                kv_type: KvType | None = None) -> DecodeSession:
        """A session of ``n_cells`` KV cells for ``n_seqs`` sequences, in one of ``kv_layouts``
        (None: ``memory_layout``'s), its cache in ``kv_type`` (None: ``memory_layout.kv_type``)."""

    def weights_bytes(self) -> int: ...

    def constraint_vocab(self) -> Vocab:
        """The vocabulary as the constraint engine reads it (built on first use, then kept)."""

    def close(self) -> None: ...


class CellBook:
    """Which KV cells each sequence references, counted the way the cache stores them.

    In a unified cache (the default) the prompt's cells are shared by every sequence
    that holds them and a fork shares all of its parent's cells; with one stream per
    sequence (``copy_on_fork``) each sequence holds its own copy of both. Each
    appended token takes one new cell. A cell is free when no sequence references it.
    """

    def __init__(self, *, copy_on_fork: bool = False) -> None:
        self.copy_on_fork = copy_on_fork
        self._cells: dict[int, list[int]] = {}
        self._refs: list[int] = []
        self._used = 0
        self.peak = 0

    def _new_cells(self, n: int) -> list[int]:
        start = len(self._refs)
        self._refs.extend([0] * n)
        return list(range(start, start + n))

    def _ref(self, cells: Sequence[int]) -> None:
        refs = self._refs
        for c in cells:
            if refs[c] == 0:
                self._used += 1
            refs[c] += 1
        self.peak = max(self.peak, self._used)

    def shared_prompt(self, n_tokens: int, seq_ids: Sequence[int]) -> None:
        cells = self._new_cells(n_tokens)
        for s in seq_ids:
            self._cells[s] = list(cells) if not self.copy_on_fork or s == seq_ids[0] else self._new_cells(n_tokens)
            self._ref(self._cells[s])

    def append(self, seq_id: int, n_tokens: int) -> None:
        cells = self._new_cells(n_tokens)
        self._cells.setdefault(seq_id, []).extend(cells)
        self._ref(cells)

    def fork(self, src: int, dst: int, n_tokens: int | None = None) -> None:
        cells = list(self._cells.get(src, []))[:n_tokens]
        if self.copy_on_fork:
            cells = self._new_cells(len(cells))
        self._cells[dst] = cells
        self._ref(cells)

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        """Keep only ``seq_id``'s first ``n_tokens`` cells."""
        own = self._cells.get(seq_id, [])
        refs = self._refs
        for c in own[n_tokens:]:
            refs[c] -= 1
            if refs[c] == 0:
                self._used -= 1
        del own[n_tokens:]

    def remove(self, seq_id: int) -> list[int]:
        """Drop ``seq_id``; returns the cells no sequence references any more."""
        refs = self._refs
        freed = []
        for c in self._cells.pop(seq_id, []):
            refs[c] -= 1
            if refs[c] == 0:
                self._used -= 1
                freed.append(c)
        return freed

    def last_cell(self) -> int:
        """The latest cell any sequence holds (-1 when none)."""
        return max((own[-1] for own in self._cells.values() if own), default=-1)

    def position(self, seq_id: int) -> int:
        """Next position of ``seq_id`` (its length so far)."""
        return len(self._cells.get(seq_id, ()))

    def holds(self, seq_id: int) -> bool:
        return seq_id in self._cells

    @property
    def used(self) -> int:
        return self._used


def check_session_shape(info: ModelInfo, n_seqs: int, n_cells: int) -> None:
    """What every backend refuses before allocating a session. (A sequence's own length is
    the planner's to keep within the model's context; the cells of a session are shared by
    its sequences, so a session may hold more cells than one sequence may use.)"""
    if n_seqs < 1:
        raise UsageError("a session needs at least one sequence")
    if n_cells > info.n_ctx_train * n_seqs:
        raise ContextOverflow(
            f"{n_cells} KV cells for {n_seqs} sequences exceed the model's context of {info.n_ctx_train} "
            "per sequence; lower --max-tokens or -k"
        )


def check_prompt(tokens: Sequence[int], n_cells: int) -> None:
    """What every session's prefill refuses."""
    if not tokens:
        raise UsageError("empty prompt")
    if len(tokens) >= n_cells:
        raise ContextOverflow(f"prompt of {len(tokens)} tokens does not fit a context of {n_cells}")
