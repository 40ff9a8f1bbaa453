"""Tokenizing for the ONNX backend, through a ``tokenizer.json`` (``tokenizers``).

Mirrors what the llama.cpp backend offers: ``tokenize`` with or without the
BOS token and with or without parsing special-token text, ``token_bytes``
(control tokens render as nothing, like llama.cpp's ``token_to_piece`` with
``special=False``) and the end-of-generation set from the model config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edgescale.errors import InvalidModelFile
from edgescale.runtime.onnx_errors import first_line

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable Latin-1 bytes stand
    for themselves, the other 68 bytes for the code points from 256 on, in order."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    kept = set(keep)
    table = {chr(b): b for b in keep}
    extra = 0
    for b in range(256):
        if b not in kept:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class OnnxTokenizer:
    """A ``tokenizer.json`` with the Engine protocol's tokenizing methods."""

    def __init__(
        self, path: Path, *, bos_token_id: int | None, add_bos: bool, eog_ids: frozenset[int]
    ) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
            spec = json.loads(self._tok.to_str())
        except FileNotFoundError:
            raise InvalidModelFile(f"{path}: tokenizer file is missing") from None
        except Exception as exc:  # noqa: BLE001  (tokenizers raises a plain Exception for bad files)
            raise InvalidModelFile(f"{path}: unreadable tokenizer ({first_line(exc)})") from None
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos
        self.eog_ids = eog_ids
        self.n_vocab = int(self._tok.get_vocab_size(with_added_tokens=True))
        decoder = spec.get("decoder") or {}
        self._byte_level = _uses_byte_level(decoder)
        self._alphabet = byte_level_alphabet() if self._byte_level else {}
        added: dict[int, Any] = self._tok.get_added_tokens_decoder()
        self._control = frozenset(i for i, t in added.items() if t.special)
        self._added_text = {i: t.content for i, t in added.items() if not t.special}
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        tok = self._tok
        tok.encode_special_tokens = not parse_special
        ids = list(tok.encode(text, add_special_tokens=False).ids)
        if add_special and self.add_bos and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return piece

    def _piece(self, token: int) -> bytes:
        if token in self._control:
            return b""
        if token in self._added_text:
            return self._added_text[token].encode("utf-8")
        text = self._tok.id_to_token(token)
        if text is None:
            return b""
        if self._byte_level:
            table = self._alphabet
            try:
                return bytes(table[c] for c in text)
            except KeyError:
                return text.encode("utf-8")
        m = _BYTE_TOKEN.match(text)
        if m:
            return bytes([int(m.group(1), 16)])
        return text.replace("\u2581", " ").encode("utf-8")

    def json(self) -> str:
        """The tokenizer as ``tokenizer.json`` text (what llguidance reads)."""
        return str(self._tok.to_str())

    def token_text(self, token: int) -> str:
        return self._tok.id_to_token(token) or ""

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids


def _uses_byte_level(decoder: dict[str, Any]) -> bool:
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_uses_byte_level(d) for d in decoder.get("decoders", []) if isinstance(d, dict))
