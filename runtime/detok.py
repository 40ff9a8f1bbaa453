"""UTF-8-safe incremental detokenisation.

Token pieces are byte strings; a multi-byte character can be split across two
tokens. Bytes are fed through an incremental UTF-8 decoder, which holds an
incomplete character back until its last byte arrives.
"""

from __future__ import annotations

import codecs


class IncrementalText:
    """Accumulates token bytes and hands out complete text."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the newly completed text (may be empty)."""
        delta = self._decoder.decode(piece)
        if delta:
            self._parts.append(delta)
        return delta

    def flush(self) -> str:
        """End of sequence: decode whatever bytes are left (invalid ones become U+FFFD)."""
        delta = self._decoder.decode(b"", final=True)
        if delta:
            self._parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""
