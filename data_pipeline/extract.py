"""HTML -> text that keeps the mathematics (stage 2), written on lxml.

Where pages hide their formulas, and what we keep:
- MathJax v2 sources ``<script type="math/tex">x^2</script>`` (``; mode=display`` for display
  math) become ``$x^2$`` / ``$$x^2$$``; the rendered MathJax spans beside them are dropped.
- KaTeX renders each formula twice (``span.katex-mathml`` holding MathML with a TeX
  ``annotation``, and ``span.katex-html``): the annotation is kept once, the HTML copy dropped.
- ``<math>`` (MathML, also MathJax v3's assistive MathML) becomes LaTeX (``mathml.py``).
- ``<img alt="\\frac{a}{b}">`` (LaTeX rendered as images, as WordPress does) keeps its alt text.
- ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]`` written in the page text are left intact.
Boilerplate goes: ``nav``/``header``/``footer``/``aside``/forms/menus/scripts/styles, elements
whose class, id or role names navigation, sidebars, cookie banners, sharing widgets and ads,
and link-dense lines (more than ``max_link_density`` of their characters inside ``<a>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import lxml.html
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from lxml import etree

from .mathml import is_display, local_name, mathml_to_latex

_TEX_TAG = "dsm-tex"  # placeholder element holding an already delimited formula
_DROP_TAGS = frozenset(
    [
        "script",
        "style",
        "noscript",
        "nav",
        "footer",
        "aside",
        "form",
        "menu",
        "iframe",
        "svg",
        "button",
        "select",
        "option",
        "input",
        "textarea",
        "template",
        "head",
        "object",
        "embed",
        "canvas",
        "audio",
        "video",
        "map",
        "dialog",
    ]
)
_BLOCK_TAGS = frozenset(
    [
        "p",
        "div",
        "section",
        "article",
        "main",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "li",
        "ul",
        "ol",
        "table",
        "tr",
        "thead",
        "tbody",
        "tfoot",
        "blockquote",
        "pre",
        "dl",
        "dt",
        "dd",
        "figure",
        "figcaption",
        "address",
        "hr",
        "center",
        "details",
        "summary",
        "body",
        "html",
        "header",
    ]
)
_CELL_TAGS = frozenset(["td", "th"])
_BOILER_TOKENS = frozenset(
    [
        "nav",
        "navbar",
        "navigation",
        "menu",
        "menubar",
        "sidebar",
        "footer",
        "breadcrumb",
        "breadcrumbs",
        "cookie",
        "cookies",
        "banner",
        "share",
        "sharing",
        "social",
        "advert",
        "advertisement",
        "ads",
        "ad",
        "popup",
        "modal",
        "related",
        "widget",
        "widgets",
        "subscribe",
        "newsletter",
        "toolbar",
        "pagination",
        "skiplink",
        "masthead",
    ]
)
_BOILER_ROLES = frozenset(
    ["navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"]
)
_MATHJAX_RENDERED = re.compile(r"^(MathJax(_\w+)?|MJX\w*|mjx-\w+)$")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+|[\^_]\{|\^\d")
_LATEX_IMG_HINT = re.compile(r"latex|mathtex|codecogs|\btex\b|equation|formula", re.IGNORECASE)
_FILE_NAME = re.compile(r"\.(jpe?g|png|gif|svg|webp)$", re.IGNORECASE)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
_WS = re.compile(r"\s+")


@dataclass
class Extraction:
    """The text of a page and how many formulas were recovered from markup."""

    text: str
    math_from_markup: int


def _classes(el: etree._Element) -> list[str]:
    return ((el.get("class") or "") + " " + (el.get("id") or "")).split()


def _is_boilerplate(el: etree._Element, tag: str) -> bool:
    if tag in _DROP_TAGS:
        return True
    if tag in ("html", "body", "main", "article"):
        return False
    if (el.get("role") or "").lower() in _BOILER_ROLES:
        return True
    for name in _classes(el):
        tokens = [t for t in re.split(r"[-_]", name.lower()) if t]
        # first or last token only: "site-footer", "nav-menu", but not "footer-note-content"
        if tokens and (tokens[0] in _BOILER_TOKENS or tokens[-1] in _BOILER_TOKENS):
            return True
    return False


def _replace(el: etree._Element, tex: str | None, display: bool) -> None:
    """Replace ``el`` by a placeholder holding ``tex`` (or nothing), keeping its tail text."""
    parent = el.getparent()
    if parent is None:
        return
    if tex is None:
        el.drop_tree() if hasattr(el, "drop_tree") else parent.remove(el)
        return
    new = etree.Element(_TEX_TAG, display="1" if display else "0")
    new.text = ("$$" + tex + "$$") if display else ("$" + tex + "$")
    new.tail = el.tail
    parent.replace(el, new)


def _looks_like_latex(alt: str, hint: str) -> bool:
    """LaTeX alt text: a TeX command or script (``\\frac``, ``x^{2}``), or any alt text of an image
    that a LaTeX renderer (WordPress ``latex.php``, CodeCogs, ...) produced. File names never."""
    if not alt or _FILE_NAME.search(alt):
        return False
    return bool(_LATEX_COMMAND.search(alt)) or bool(_LATEX_IMG_HINT.search(hint))


def _rewrite_math(root: etree._Element) -> int:
    """Turn every formula in ``root`` into a placeholder; return how many were found."""
    found = 0
    for el in list(root.iter()):
        if el.getparent() is None and el is not root:
            continue  # already removed with an ancestor
        tag = local_name(el)
        classes = _classes(el)
        if tag == "script":
            kind = (el.get("type") or "").lower()
            if kind.startswith("math/tex"):
                tex = (el.text or "").strip()
                _replace(el, tex or None, "mode=display" in kind.replace(" ", ""))
                found += bool(tex)
        elif "katex-html" in classes or any(_MATHJAX_RENDERED.match(c) for c in classes):
            _replace(el, None, False)  # rendered copies of a formula kept elsewhere
        elif tag == "math":
            display = is_display(el) or any(
                "katex-display" in _classes(a) or "MathJax_Display" in _classes(a)
                for a in el.iterancestors()
            )
            try:
                tex = mathml_to_latex(el)
            except RecursionError:  # pathological nesting: keep nothing rather than crash
                tex = ""
            _replace(el, tex or None, display)
            found += bool(tex)
        elif tag == "mjx-container":
            maths = [m for m in el.iter() if local_name(m) == "math"]
            tex = mathml_to_latex(maths[0]) if maths else ""
            _replace(el, tex or None, el.get("display") == "true")
            found += bool(tex)
        elif tag == "img":
            alt = (el.get("alt") or "").strip()
            hint = " ".join([el.get("class") or "", el.get("src") or ""])
            if _looks_like_latex(alt, hint):
                alt = alt.strip("$").strip()
                _replace(el, alt, False)
                found += 1
    return found


def _drop_boilerplate(root: etree._Element) -> None:
    total = len(root.text_content()) or 1
    for el in list(root.iter()):
        if not isinstance(el.tag, str) or el.getparent() is None:
            continue
        tag = local_name(el)
        if tag == _TEX_TAG or not _is_boilerplate(el, tag):
            continue
        # an element that holds most of the page is the page, whatever its class says
        if tag not in _DROP_TAGS and len(el.text_content()) > 0.6 * total:
            continue
        if tag == "header" and any(
            local_name(a) in ("article", "main") for a in el.iterancestors()
        ):
            continue  # an article's own header holds its title
        el.getparent().remove(el) if el.tail is None else el.drop_tree()


class _Lines:
    """Accumulates output lines with their link and math character counts."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, int, bool]] = []  # (text, link_chars, has_math)
        self.parts: list[str] = []
        self.link_chars = 0
        self.has_math = False

    def add(self, text: str | None, in_link: bool, pre: bool, math: bool = False) -> None:
        if not text:
            return
        if not pre:
            text = _WS.sub(" ", text)
        self.parts.append(text)
        if in_link:
            self.link_chars += len(text.strip())
        self.has_math |= math

    def newline(self) -> None:
        text = "".join(self.parts)
        for i, line in enumerate(text.split("\n")):
            line = line.strip()
            if line:
                self.lines.append((line, self.link_chars if i == 0 else 0, self.has_math))
        self.parts, self.link_chars, self.has_math = [], 0, False

    def text(self, max_link_density: float) -> str:
        self.newline()
        kept = [
            line
            for line, links, math in self.lines
            if math or links <= max_link_density * len(line.replace(" ", "") or "x")
        ]
        return "\n".join(kept)


class _Tail(tuple):
    """A tail text waiting on the stack; unpacked like an element entry."""

    def __new__(cls, text: str | None, in_link: bool, pre: bool):
        return super().__new__(cls, (text, in_link, pre, None))


def _serialize_entry(out: _Lines, entry: _Tail) -> None:
    text, in_link, pre, _ = entry
    out.add(text, in_link, pre)


def extract_text(html: str, *, max_link_density: float = 0.5) -> Extraction:
    """Main text of an HTML page with its formulas as LaTeX.

    ``max_link_density``: lines with a larger share of characters inside links are dropped
    (navigation lists, tag clouds), unless they hold a formula.
    """
    html = _XML_DECL.sub("", html, count=1)
    if not html.strip():
        return Extraction("", 0)
    # huge_tree: keep content nested deeper than 256 levels (libxml2 still stops at ~2048)
    parser = lxml.html.HTMLParser(
        remove_comments=True, remove_pis=True, recover=True, huge_tree=True
    )
    try:
        root = lxml.html.document_fromstring(html, parser=parser)
    except (etree.ParserError, ValueError):
        return Extraction("", 0)
    found = _rewrite_math(root)
    _drop_boilerplate(root)
    return Extraction(_serialize_walk(root, max_link_density), found)


def _serialize_walk(root: etree._Element, max_link_density: float) -> str:
    out = _Lines()
    stack: list = [(root, False, False, False)]
    while stack:
        entry = stack.pop()
        if isinstance(entry, _Tail):
            _serialize_entry(out, entry)
            continue
        el, in_link, pre, closing = entry
        tag = local_name(el)
        if closing:
            if tag in _BLOCK_TAGS or (tag == _TEX_TAG and el.get("display") == "1"):
                out.newline()
            elif tag in _CELL_TAGS:
                out.add(" ", False, False)
            continue
        if not tag:
            continue
        if tag == _TEX_TAG:
            if el.get("display") == "1":
                out.newline()
            out.add(el.text, in_link, False, math=True)
            stack.append((el, in_link, pre, True))
            continue
        if tag == "br" or tag in _BLOCK_TAGS:
            out.newline()
        child_link = in_link or tag == "a"
        child_pre = pre or tag in ("pre", "code")
        out.add(el.text, child_link, child_pre)
        stack.append((el, in_link, pre, True))
        for child in reversed(list(el)):
            stack.append(_Tail(child.tail, child_link, child_pre))
            stack.append((child, child_link, child_pre, False))
    return out.text(max_link_density)


class MathHtmlExtractor(PipelineStep):
    """datatrove step: replaces each document's HTML by its extracted text (formulas kept).

    Drops documents whose text is empty (counted as ``empty_after_extraction``); a page that
    breaks the parser is counted as ``extract_error`` and logged with its URL, never raised.
    """

    name = "∑ math-aware HTML extraction"
    type = "🛢 - EXTRAC"

    def __init__(self, max_link_density: float = 0.5, min_chars: int = 1):
        super().__init__()
        self.max_link_density = max_link_density
        self.min_chars = min_chars

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("total")
            with self.track_time():
                try:
                    result = extract_text(doc.text, max_link_density=self.max_link_density)
                except Exception as e:  # noqa: BLE001 - one bad page must not end the task
                    logger.warning(f"extraction failed for {doc.metadata.get('url')}: {e!r}")
                    self.stat_update("extract_error")
                    continue
            if len(result.text) < self.min_chars:
                self.stat_update("empty_after_extraction")
                continue
            doc.text = result.text
            doc.metadata["math_from_markup"] = result.math_from_markup
            if result.math_from_markup:
                self.stat_update("pages_with_markup_math")
            self.stat_update("forwarded")
            self.update_doc_stats(doc)
            yield doc
