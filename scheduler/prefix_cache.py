"""Prompt prefix cache: the KV of prompts kept after their query ends, shared with later ones.

An entry is a prompt's token list and a sequence id of the shared context that
holds its cells. A new query whose prompt starts with (part of) an entry's tokens
gets those cells shared into its first sequence (``fork`` with a length: no data
is copied in a unified KV cache) and reads only the rest of its prompt. At least
one token is always read (its logits start the samples), so a repeated prompt
reads one token, not zero.

Entries are evicted least recently used first: when a query needs their cells or
their sequence ids, or when the cache holds more than ``max_cells`` cells. An
entry's cells are freed only when no running query still shares them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgescale.scheduler.lanes import SharedContext

MIN_PREFIX = 1  # shortest prefix worth sharing: even a chat template's header saves its tokens


@dataclass
class Entry:
    tokens: np.ndarray  # the prompt, int32
    seq: int  # shared sequence id holding its cells
    hits: int = 0


@dataclass(frozen=True)
class Hit:
    seq: int  # shared sequence id to fork from
    n_tokens: int  # how many leading prompt tokens it serves


class PrefixCache:
    """LRU entries of whole prompts in one SharedContext."""

    def __init__(self, shared: SharedContext, *, max_cells: int) -> None:
        self.shared = shared
        self.max_cells = max_cells
        self._entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.tokens_served = 0
        self.evictions = 0

    @property
    def cells(self) -> int:
        return sum(len(e.tokens) for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: Sequence[int]) -> Hit | None:
        """The longest cached prefix of ``prompt``, leaving at least one token to read."""
        if not self._entries:
            self.misses += 1
            return None
        want = np.asarray(prompt, dtype=np.int32)
        best: tuple[int, tuple[int, ...]] | None = None
        for key, entry in self._entries.items():
            n = min(len(entry.tokens), len(want) - 1)
            if n < MIN_PREFIX:
                continue
            same = entry.tokens[:n] == want[:n]
            common = n if same.all() else int(np.argmin(same))
            if common >= MIN_PREFIX and (best is None or common > best[0]):
                best = (common, key)
        if best is None:
            self.misses += 1
            return None
        common, key = best
        entry = self._entries[key]
        self._entries.move_to_end(key)
        entry.hits += 1
        self.hits += 1
        self.tokens_served += common
        return Hit(entry.seq, common)

    def insert(self, prompt: Sequence[int], src_seq: int) -> bool:
        """Keep ``prompt``'s cells (held now by shared sequence ``src_seq``, which holds
        exactly the prompt) under a sequence id of the cache's own. False when no id is free
        or the prompt alone exceeds the cache's cell limit."""
        key = tuple(int(t) for t in prompt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return True
        if len(key) > self.max_cells:
            return False
        while self._entries and self.cells + len(key) > self.max_cells:
            self.evict_one()
        if self.shared.free_ids == 0 and not self.evict_one():
            return False
        (seq,) = self.shared.take_ids(1)
        self.shared.session.fork(src_seq, seq, len(key))
        self._entries[key] = Entry(np.asarray(key, dtype=np.int32), seq)
        return True

    def evict_one(self) -> bool:
        """Drop the least recently used entry; False when empty."""
        if not self._entries:
            return False
        _, entry = self._entries.popitem(last=False)
        self.shared.give_ids([entry.seq])
        self.evictions += 1
        return True

    def clear(self) -> None:
        while self.evict_one():
            pass
