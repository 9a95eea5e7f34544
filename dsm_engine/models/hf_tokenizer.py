"""Tokenizer files that travel with checkpoints and exports, in a form transformers loads.

The trainers read a bare ``tokenizer.json`` (Hugging Face ``tokenizers``); ``AutoTokenizer``
also needs the special tokens, kept in ``tokenizer_config.json``. A folder that has one is
copied as it is; a bare ``tokenizer.json`` is wrapped, its special tokens found by name in its
vocabulary. A run keeps its tokenizer under ``<run_dir>/checkpoints/tokenizer`` (and
``dsm convert hf-to-dsm`` under ``<root>/tokenizer``), where ``dsm convert dsm-to-hf`` finds it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dsm_engine.text_codec import BEGIN_TOKENS, END_TOKENS, PAD_TOKENS, UNK_TOKENS

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)
# role -> token names tried in order (the first one in the vocabulary wins)
SPECIAL_TOKENS = {
    "eos_token": END_TOKENS,
    "bos_token": BEGIN_TOKENS,
    "pad_token": PAD_TOKENS,
    "unk_token": UNK_TOKENS,
}


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer / generation files present in ``src`` to ``dst``; returns their names."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds a tokenizer transformers can load."""
    return any((Path(folder) / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))


def checkpoint_tokenizer(ckpt: str | Path | None) -> Path | None:
    """The tokenizer folder saved with a checkpoint root or step folder, if any."""
    if ckpt is None:
        return None
    ckpt = Path(ckpt)
    for folder in (ckpt / "tokenizer", ckpt.parent / "tokenizer"):
        if has_tokenizer(folder):
            return folder
    return None


def save_hf_tokenizer(src: str | Path, dst: str | Path) -> Path:
    """Write the tokenizer ``src`` (a Hugging Face folder, or a ``tokenizer.json`` file or the
    folder holding one) into ``dst`` so that ``AutoTokenizer.from_pretrained(dst)`` loads it
    with its special tokens. Raises FileNotFoundError / ValueError naming ``src``."""
    src, dst = Path(src), Path(dst)
    if src.is_dir() and (src / "tokenizer_config.json").is_file() and has_tokenizer(src):
        copy_tokenizer_files(src, dst)
        return dst
    file = src / "tokenizer.json" if src.is_dir() else src
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer {src}: no tokenizer.json there")
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise ValueError(f"tokenizer {file}: cannot be loaded ({e})") from None
    special = {}
    for role, names in SPECIAL_TOKENS.items():
        found = next((n for n in names if tok.token_to_id(n) is not None), None)
        if found is not None:
            special[role] = found
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(str(dst))
    return dst
