"""HTML -> text that keeps the mathematics (stage 2): formulas rewritten in the tree first,
then resiliparse's main-content extraction does the rest.

Where pages hide their formulas, and what we keep (each becomes ``$tex$``, or ``$$tex$$`` on a
line of its own for display math, before the text is extracted):
- MathJax v2 sources ``<script type="math/tex">x^2</script>`` (``; mode=display`` for display
  math); the rendered MathJax copies beside them (``MathJax*``/``MJX*``/``mjx-*`` classes) go.
- KaTeX renders each formula twice (``span.katex-mathml`` holding MathML with a TeX
  ``annotation``, and ``span.katex-html``): the annotation is kept once, the HTML copy dropped.
- ``<math>`` (MathML) and MathJax v3's ``<mjx-container>`` (its assistive MathML) become
  LaTeX (``mathml.py``; a TeX annotation is used verbatim).
- ``<img alt="\\frac{a}{b}">`` (LaTeX rendered as images, as WordPress does) keeps its alt text;
  other alt text is dropped.
- ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]`` written in the page text are left intact.

Only the formula nodes (found by CSS selectors, in C) are touched from Python; parsing,
main-content detection and serialisation are resiliparse's (lexbor), so this runs near
resiliparse's speed. On top of resiliparse's main-content rules, elements whose class names
start with a boilerplate word it keeps (sidebars, widgets, cookie notices, breadcrumbs,
sharing and subscription boxes, ...) are skipped, and so are link-dense lines (more than
``max_link_density`` of their characters inside ``<a>``) that hold no formula.
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass

import lxml.html
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from lxml import etree
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree
from resiliparse.parse.html import Node as DomNode

from .mathml import mathml_to_latex

# Formulas are wrapped in two private-use characters while the text is extracted, so that
# link-density filtering can tell a line holding a formula; both are removed afterwards.
_OPEN, _CLOSE = "\ue000", "\ue001"
# Each selector list below is matched by lexbor in one walk of the tree (or during
# resiliparse's own walk, for the skip list); Python only sees the nodes they return.
# substrings of all formula markup (not "Math": scripts calling Math.max would match)
_MATH_MARKERS = ("<math", ":math", "math/tex", "MathJax", "mathjax", "katex", "mjx-", "MJX")
_MATH_NODES = (
    "mjx-container, script[type^='math/tex' i], math, .katex-html, [class^=MathJax], "
    "[class*=' MathJax'], [class^=MJX], [class*=' MJX'], [class^=mjx-], [class*=' mjx-']"
)
_IMG_MARKERS = ("\\", "^", "_{", "atex", "codecogs", "quation", "ormula")
_LATEX_IMG = ", ".join(
    ["img[alt*='\\\\']", "img[alt*='^']", "img[alt*='_{']"]
    + [
        f"img[alt][{a}*={w} i]"
        for a in ("class", "src")
        for w in ("tex", "codecogs", "equation", "formula")
    ]
)
# Boilerplate that resiliparse's main-content rules keep: class names that start with one of
# these words ("sidebar-widget", "cookie_notice"); a page wrapper ("has-sidebar") is not hit.
_BOILER_WORDS = (
    "sidebar",
    "widget",
    "cookie",
    "breadcrumb",
    "toolbar",
    "masthead",
    "pagination",
    "newsletter",
    "subscribe",
    "popup",
    "modal",
    "advert",
    "skiplink",
    "menubar",
    "social",
    "share",
)
_NOT_PAGE = ":not(html):not(body):not(main):not(article)"
_SKIP = [f"[class^={w} i]{_NOT_PAGE}, [class*=' {w}' i]{_NOT_PAGE}" for w in _BOILER_WORDS]
_DISPLAY_PARENT = ".katex-display, .MathJax_Display"
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+|[\^_]\{|\^\d")
_LATEX_IMG_HINT = re.compile(r"latex|mathtex|codecogs|\btex\b|equation|formula", re.IGNORECASE)
_FILE_NAME = re.compile(r"\.(jpe?g|png|gif|svg|webp)$", re.IGNORECASE)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")
_MATHML_PARSER = lxml.html.HTMLParser(remove_comments=True, recover=True, huge_tree=True)


@dataclass
class Extraction:
    """The text of a page and how many formulas were recovered from markup."""

    text: str
    math_from_markup: int


def _looks_like_latex(alt: str, hint: str) -> bool:
    """LaTeX alt text: a TeX command or script (``\\frac``, ``x^{2}``), or any alt text of an image
    that a LaTeX renderer (WordPress ``latex.php``, CodeCogs, ...) produced. File names never."""
    if not alt or _FILE_NAME.search(alt):
        return False
    return bool(_LATEX_COMMAND.search(alt)) or bool(_LATEX_IMG_HINT.search(hint))


def _mathml_tex(node: DomNode) -> str:
    """LaTeX of the ``<math>`` element ``node`` (re-parsed by lxml for ``mathml_to_latex``)."""
    try:
        el = lxml.html.fragment_fromstring(node.html, parser=_MATHML_PARSER)
        return mathml_to_latex(el)
    except (etree.ParserError, ValueError, RecursionError):  # keep nothing rather than crash
        return ""


class _Rewriter:
    """Replaces formula nodes of one tree by their delimited LaTeX; counts them."""

    def __init__(self, tree: HTMLTree) -> None:
        self.tree = tree
        self.found = 0
        self.gone: list[DomNode] = []  # replaced or removed: their descendants are done

    def _done(self, node: DomNode) -> bool:
        return any(g.contains(node) for g in self.gone)

    def remove(self, node: DomNode) -> None:
        self.gone.append(node)
        node.remove()

    def replace(self, node: DomNode, tex: str, display: bool) -> None:
        tex = tex.strip()
        if not tex:
            self.remove(node)
            return
        self.found += 1
        self.gone.append(node)
        text = self.tree.create_text_node(
            _OPEN + (f"$${tex}$$" if display else f"${tex}$") + _CLOSE
        )
        if display:  # a block of its own, so the formula gets its own line
            block = self.tree.create_element("div")
            block.append_child(text)
            text = block
        node.replace_with(text)

    def math(self, doc: DomNode) -> None:
        """Formula markup (nodes come in document order: containers before their content)."""
        for node in doc.query_selector_all(_MATH_NODES).values():
            if self._done(node):
                continue
            tag = node.tag
            if tag == "mjx-container":
                maths = node.query_selector_all("math")
                tex = _mathml_tex(maths[0]) if len(maths) else ""
                self.replace(node, tex, node.getattr("display") == "true")
            elif tag == "script":
                kind = (node.getattr("type") or "").lower().replace(" ", "")
                self.replace(node, node.text or "", "mode=display" in kind)
            elif tag == "math":
                display = (node.getattr("display") or "").lower() == "block"
                display = display or node.closest(_DISPLAY_PARENT) is not None
                self.replace(node, _mathml_tex(node), display)
            else:
                self.remove(node)  # a rendered copy of a formula kept elsewhere

    def image(self, node: DomNode) -> None:
        alt = (node.getattr("alt") or "").strip()
        hint = (node.getattr("class") or "") + " " + (node.getattr("src") or "")
        if _looks_like_latex(alt, hint):
            self.replace(node, alt.strip("$"), False)


def _rewrite(tree: HTMLTree, doc: DomNode, html: str) -> int:
    """Formulas to delimited LaTeX; returns how many were found. The substring checks on the
    raw HTML spare most pages the tree queries."""
    rw = _Rewriter(tree)
    if any(m in html for m in _MATH_MARKERS):
        rw.math(doc)
    if "<img" in html and any(m in html for m in _IMG_MARKERS):
        for node in doc.query_selector_all(_LATEX_IMG).values():
            rw.image(node)
    return rw.found


def _link_chars(line: str) -> int:
    """Characters of ``line`` (minimal HTML) inside ``<a>`` elements (linear in the line)."""
    if "</a>" not in line:
        return 0
    n = 0
    for part in line.split("</a>")[:-1]:
        start = part.rfind("<a")
        if start >= 0:
            n += len(_TAG.sub("", part[part.find(">", start) + 1 :]).strip())
    return n


def _lines(minimal_html: str, max_link_density: float) -> str:
    """resiliparse's minimal-HTML output -> text lines, without link-dense lines."""
    kept = []
    for line in minimal_html.split("\n"):
        text = html_lib.unescape(_TAG.sub("", line)).strip()
        if not text:
            continue
        if _OPEN in text or _link_chars(line) <= max_link_density * len(
            text.replace(" ", "") or "x"
        ):
            text = text.replace(_OPEN, "").replace(_CLOSE, "").strip()
            if text:
                kept.append(text)
    return "\n".join(kept)


def extract_text(html: str, *, max_link_density: float = 0.5) -> Extraction:
    """Main text of an HTML page with its formulas as LaTeX.

    ``max_link_density``: lines with a larger share of characters inside links are dropped
    (navigation lists, tag clouds), unless they hold a formula.
    """
    html = _XML_DECL.sub("", html, count=1)
    if not html.strip():
        return Extraction("", 0)
    tree = HTMLTree.parse(html)
    doc = tree.document
    if doc is None:
        return Extraction("", 0)
    found = _rewrite(tree, doc, html)
    out = extract_plain_text(
        tree,
        preserve_formatting="minimal_html",
        main_content=True,
        links=True,
        alt_texts=False,
        list_bullets=False,
        skip_elements=_SKIP,
    )
    return Extraction(_lines(out, max_link_density), found)


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
