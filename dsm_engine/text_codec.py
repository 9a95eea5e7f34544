"""Text ↔ token ids with a ``tokenizer.json``, and the one list of special-token spellings.

Every part of the engine that looks for a beginning, end, padding or unknown token (GRPO
prompts and rollouts, SFT data, corpus tokenisation, saved Hugging Face tokenizers) tries
the spellings below in this order and takes the first the vocabulary holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsm_engine.config import ConfigError

END_TOKENS = (
    "<|endoftext|>",
    "<｜end▁of▁sentence｜>",
    "</s>",
    "<|end_of_text|>",
    "<eos>",
    "<|eot_id|>",
)
BEGIN_TOKENS = ("<s>", "<bos>", "<｜begin▁of▁sentence｜>", "<|begin_of_text|>")
PAD_TOKENS = ("<pad>", "<|pad|>")
UNK_TOKENS = ("<unk>",)


def first_token_id(tokenizer: Any, names: tuple[str, ...]) -> int | None:
    """Id of the first of ``names`` in ``tokenizer``'s vocabulary (``tokenizers`` API), or None."""
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


class TextCodec:
    """A ``tokenizers.Tokenizer`` with the special ids generation needs (bos optional, eos
    required); ``pad_id`` falls back to ``eos_id``."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"data.tokenizer: {path} is not a tokenizer.json file")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.bos_id = first_token_id(self.tokenizer, BEGIN_TOKENS)
        self.eos_id = first_token_id(self.tokenizer, END_TOKENS)
        if self.eos_id is None:
            raise ConfigError(f"data.tokenizer: {path} has none of the end tokens {END_TOKENS}")
        self.pad_id = first_token_id(self.tokenizer, PAD_TOKENS) or self.eos_id
        self.vocab_size = self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
