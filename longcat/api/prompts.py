"""Prompt token rules: the pipeline's tokenization of a prompt (quoted spans character by character), the
512-token limit, and a torch-free tokenizer for the gateway.

``prompt_token_ids`` takes any tokenizer called like transformers' (``tok(text, add_special_tokens=False)
["input_ids"]``): the encoder passes the pipeline's ``Qwen2Tokenizer``, the gateway a :class:`PromptTokenizer`
over the model's ``tokenizer.json`` (the ``tokenizers`` library, no transformers). ``tests/test_api.py`` holds
both to the same ids, and ``split_quotation`` equal to diffusers' (see its docstring for where it differs).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from longcat.errors import NotFound, PromptTooLong

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 512
TOKENIZER_FILE = "tokenizer/tokenizer.json"  # inside a diffusers-format LongCat-Image-Edit folder


_WORD_INTERNAL_QUOTE = re.compile(r"[a-zA-Z]+'[a-zA-Z]+")
_QUOTE_PAIRS = [("'", "'"), ('"', '"'), ("\u2018", "\u2019"), ("\u201c", "\u201d")]


def _quote_pattern(quote_pairs) -> str:
    return "|".join([re.escape(q1) + r"[^" + re.escape(q1 + q2) + r"]*?" + re.escape(q2) for q1, q2 in quote_pairs])


def split_quotation(prompt, quote_pairs=None):
    """diffusers' ``split_quotation`` (pipeline_longcat_image_edit): [(part, is_quoted), ...], in linear time.

    Apostrophes inside words (``don't``) are not quotes. diffusers masks them by replacing each distinct such
    word with a placeholder ``i + 1`` copies long, which is quadratic in their number, and restores them in an
    order that turns the second word into copies of the first (``"it's Bob's"`` -> ``"Bob'sBob's Bob's"``,
    which word depends on PYTHONHASHSEED). With at most one distinct such word that is diffusers' algorithm,
    verbatim (linear there); with more, the apostrophes are masked in one pass and the text kept as written.
    """
    if quote_pairs is None:
        quote_pairs = _QUOTE_PAIRS
    pattern = _quote_pattern(quote_pairs)
    matches = list(_WORD_INTERNAL_QUOTE.finditer(prompt))
    if len({m.group(0) for m in matches}) <= 1:
        return _split_quotation_diffusers(prompt, pattern, matches)
    used = set(prompt)  # a private-use character the prompt does not contain stands in for those apostrophes
    mask = next(chr(c) for c in (*range(0xE000, 0xF900), *range(0xF0000, 0x110000)) if chr(c) not in used)
    chars = list(prompt)
    for m in matches:  # the apostrophe of each word-internal match (findall's non-overlapping ones)
        chars[m.start() + m.group(0).index("'")] = mask
    result = []
    for part in re.split(f"({pattern})", "".join(chars)):
        if part:
            part = part.replace(mask, "'")
            result.append((part, bool(re.match(pattern, part))))
    return result


def _split_quotation_diffusers(prompt, pattern, matches):
    mapping_word_internal_quote = []
    for i, word_src in enumerate({m.group(0) for m in matches}):  # at most one word here
        word_tgt = "longcat_$##$_longcat" * (i + 1)
        prompt = prompt.replace(word_src, word_tgt)
        mapping_word_internal_quote.append([word_src, word_tgt])
    parts = re.split(f"({pattern})", prompt)

    result = []
    for part in parts:
        for word_src, word_tgt in mapping_word_internal_quote:
            part = part.replace(word_tgt, word_src)
        if re.match(pattern, part):
            if len(part):
                result.append((part, True))
        else:
            if len(part):
                result.append((part, False))
    return result


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """The pipeline's tokenization: quoted spans are tokenized character by character (for text rendering)."""
    return _token_ids(tokenizer, prompt)[0]


def _token_ids(tokenizer, prompt: str, stop_after: int | None = None) -> tuple[list[int], bool]:
    """(ids, complete): with ``stop_after``, stop once more ids than that are collected (same first ids)."""
    ids: list[int] = []
    for part, quoted in split_quotation(prompt):
        pieces = list(part) if quoted else [part]
        for piece in pieces:
            if stop_after is not None and len(ids) > stop_after:  # more pieces left: the count is a floor
                return ids, False
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids, True


def check_prompt_length(tokenizer, prompt: str, field: str = "prompt", truncate: bool = False) -> list[int]:
    # A long quoted span costs one tokenizer call per character: stop as soon as the answer is known.
    ids, complete = _token_ids(tokenizer, prompt, stop_after=MAX_PROMPT_TOKENS)
    if len(ids) > MAX_PROMPT_TOKENS:
        count = f"{len(ids)}" if complete else f"over {MAX_PROMPT_TOKENS} (at least {len(ids)})"
        if not truncate:
            raise PromptTooLong(f"is {count} tokens; the model reads at most {MAX_PROMPT_TOKENS}", field)
        log.warning("%s truncated from %s to %d tokens", field, count, MAX_PROMPT_TOKENS)
        ids = ids[:MAX_PROMPT_TOKENS]
    return ids


class PromptTokenizer:
    """The model's ``tokenizer.json`` through the ``tokenizers`` library, called like a transformers tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "PromptTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}


def tokenizer_file(model: str) -> Path:
    """A model folder (or ``tiny``, once built) -> its ``tokenizer.json``; a hub id -> downloaded (HF cache)."""
    from longcat.api.models import is_tiny, tiny_dir

    if is_tiny(model):
        folder = tiny_dir(model)
        if not (folder / TOKENIZER_FILE).is_file():
            raise NotFound(f"the tiny model is not built yet at {folder} (run `longcat tiny`, or start a model "
                           "service first)", "model")
        return folder / TOKENIZER_FILE
    if os.path.isdir(model):
        path = Path(model) / TOKENIZER_FILE
        if not path.is_file():
            raise NotFound(f"{model!r} has no {TOKENIZER_FILE}", "model")
        return path
    from huggingface_hub import hf_hub_download  # a dependency of tokenizers

    return Path(hf_hub_download(model, TOKENIZER_FILE))


def load_prompt_tokenizer(model: str) -> PromptTokenizer:
    return PromptTokenizer.from_file(tokenizer_file(model))
