"""A ``tokenizer.json`` (Hugging Face ``tokenizers``) from a GGUF file's vocabulary.

Supported: byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``) with
the pre-tokenizers llama.cpp knows by name, and SentencePiece BPE vocabularies
(``"llama"``: scores instead of merges, byte fallback). The split rules per
pre-type are written here from llama.cpp's documented behaviour: a pre-type
this module does not know is refused rather than guessed, since a wrong split
silently changes every prompt's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgescale.errors import InvalidModelFile
from edgescale.quant.gguf_source import GGUFSource

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = (
    1,
    2,
    3,
    4,
    5,
    6,
)

# The GPT-2 split used by most byte-level BPE vocabularies.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Llama 3 style split (case-insensitive contractions, digit runs of up to three).
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
# pre-type -> (split each digit first, regex for the byte-level split)
_PRE_TYPES: dict[str, tuple[bool, str]] = {
    "gpt2": (False, GPT2_SPLIT),
    "default": (False, GPT2_SPLIT),
    "smollm": (True, GPT2_SPLIT),
    "starcoder": (True, GPT2_SPLIT),
    "refact": (True, GPT2_SPLIT),
    "codeshell": (True, GPT2_SPLIT),
    "llama-bpe": (False, LLAMA3_SPLIT),
    "llama3": (False, LLAMA3_SPLIT),
    "qwen2": (False, QWEN2_SPLIT),
}

# Fill-in-the-middle pad / repo / file-separator tokens (by metadata id, else by text): llama.cpp
# ends generation on them too.
FIM_EOG: tuple[tuple[str, frozenset[str]], ...] = (
    ("tokenizer.ggml.fim_pad_token_id", frozenset({"<|fim_pad|>", "<fim-pad>", "<fim_pad>"})),
    (
        "tokenizer.ggml.fim_rep_token_id",
        frozenset({"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}),
    ),
    ("tokenizer.ggml.fim_sep_token_id", frozenset({"<|file_sep|>"})),
)
# Token texts llama.cpp treats as end of generation besides the eos/eot/eom ids.
EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
    }
)


@dataclass(frozen=True)
class VocabFacts:
    """What the runtime config needs to know about the vocabulary."""

    n_vocab: int
    bos_token_id: int | None
    eos_token_id: int | None
    eog_token_ids: tuple[int, ...]
    control_token_ids: tuple[int, ...]
    bos_token: str
    eos_token: str
    add_bos: bool
    pre_type: str


def _pre_tokenizer(pre_type: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    rule = _PRE_TYPES.get(pre_type)
    if rule is None:
        known = ", ".join(sorted(_PRE_TYPES))
        raise InvalidModelFile(
            f"tokenizer pre-type {pre_type!r} is not supported for conversion (known: {known})"
        )
    digits, regex = rule
    steps: list[Any] = []
    if digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    steps.append(pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def _byte_level_model(src: GGUFSource, tokens: list[str]) -> Any:
    """GPT-2 style byte-level BPE: the GGUF's own merges and the pre-type's split."""
    from tokenizers import Tokenizer, decoders, models

    merges = src.strings("tokenizer.ggml.merges")
    if not merges:
        raise InvalidModelFile(f"{src.path}: GGUF has no tokenizer.ggml.merges")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise InvalidModelFile(f"{src.path}: malformed merge {m!r}")
        pairs.append((a, b))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False, ignore_merges=False
        )
    )
    tok.pre_tokenizer = _pre_tokenizer(str(src.meta("tokenizer.ggml.pre", "default")))
    tok.decoder = decoders.ByteLevel()
    return tok


def score_merges(tokens: list[str], scores: Any, types: Any) -> list[tuple[str, str]]:
    """Merges that reproduce SentencePiece-BPE segmentation (llama.cpp's 'llama' tokenizer).

    That tokenizer repeatedly joins the adjacent pair whose concatenation is the
    vocabulary entry of highest score. As BPE merges: every way of cutting a
    (non-byte) vocabulary entry into two entries, ranked by the entry's score.
    """
    index = {t: i for i, t in enumerate(tokens)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for i, t in enumerate(tokens):
        if types[i] == TOKEN_BYTE or len(t) < 2:
            continue
        for cut in range(1, len(t)):
            left, right = t[:cut], t[cut:]
            a, b = index.get(left), index.get(right)
            if a is not None and b is not None:
                ranked.append((-float(scores[i]), a, b, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _sentencepiece_model(src: GGUFSource, tokens: list[str], types: Any) -> Any:
    """SentencePiece BPE with byte fallback (Llama 2, Gemma): spaces become U+2581."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = src.floats("tokenizer.ggml.scores")
    if len(scores) != len(tokens):
        raise InvalidModelFile(
            f"{src.path}: GGUF has no tokenizer.ggml.scores for its 'llama' vocabulary"
        )
    unk = src.meta("tokenizer.ggml.unknown_token_id")
    vocab = {t: i for i, t in enumerate(tokens)}
    model = models.BPE(
        vocab=vocab,
        merges=score_merges(tokens, scores, types),
        fuse_unk=True,
        byte_fallback=True,
        unk_token=tokens[int(unk)] if unk is not None and int(unk) < len(tokens) else None,
    )
    tok = Tokenizer(model)
    steps: list[Any] = []
    if bool(src.meta("tokenizer.ggml.add_space_prefix", True)):
        steps.append(normalizers.Prepend("\u2581"))
    steps.append(normalizers.Replace(" ", "\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return tok


def build_tokenizer(src: GGUFSource) -> tuple[Any, VocabFacts]:
    """(tokenizers.Tokenizer, facts) for a GGUF vocabulary: byte-level BPE ('gpt2')
    or SentencePiece BPE ('llama')."""
    from tokenizers import AddedToken

    kind = src.meta("tokenizer.ggml.model")
    tokens = src.strings("tokenizer.ggml.tokens")
    types = src.ints("tokenizer.ggml.token_type")
    if not tokens:
        raise InvalidModelFile(f"{src.path}: GGUF has no tokenizer.ggml.tokens")
    if len(types) != len(tokens):
        raise InvalidModelFile(f"{src.path}: {len(types)} token types for {len(tokens)} tokens")
    if kind == "gpt2":
        tok = _byte_level_model(src, tokens)
    elif kind == "llama":
        tok = _sentencepiece_model(src, tokens, types)
    else:
        raise InvalidModelFile(
            f"{src.path}: tokenizer model {kind!r} cannot be converted (byte-level BPE 'gpt2' or SentencePiece 'llama')"
        )
    added = []
    control: list[int] = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if (
            ty == TOKEN_CONTROL or t in EOG_TEXTS
        ):  # llama.cpp makes end-of-generation texts control tokens
            control.append(i)
            added.append(AddedToken(t, special=True, normalized=False))
        elif ty == TOKEN_USER_DEFINED:
            added.append(AddedToken(t, special=False, normalized=False))
    if added:
        tok.add_tokens(added)
    pre_type = str(src.meta("tokenizer.ggml.pre", "default"))
    bos = src.meta("tokenizer.ggml.bos_token_id")
    eos = src.meta("tokenizer.ggml.eos_token_id")
    eog = {
        int(src.meta(k))
        for k in (
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        )
        if src.meta(k) is not None
    }
    eog |= {i for i, t in enumerate(tokens) if t in EOG_TEXTS}
    for key, texts in FIM_EOG:
        fim = src.meta(key)
        if fim is None:
            fim = next((i for i, t in enumerate(tokens) if t in texts), None)
        if fim is not None:
            eog.add(int(fim))
    facts = VocabFacts(
        n_vocab=len(tokens),
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_id=int(eos) if eos is not None else None,
        eog_token_ids=tuple(sorted(eog)),
        control_token_ids=tuple(control),
        bos_token=tokens[int(bos)] if bos is not None and int(bos) < len(tokens) else "",
        eos_token=tokens[int(eos)] if eos is not None and int(eos) < len(tokens) else "",
        add_bos=bool(src.meta("tokenizer.ggml.add_bos_token", False)),
        pre_type=pre_type,
    )
    return tok, facts
