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
main-content detection and serialisation are resiliparse's (lexbor). On the shipped WARC
pages this runs at ~0.65x resiliparse's own pages/s (``benchmarks/results/extract_peers.md``):
the rest is the raw-HTML scan that decides which queries to run, the minimal-HTML output
with links, and the link-density pass.

On top of resiliparse's main-content rules, elements whose class names start with a
boilerplate word it keeps (sidebars, widgets, cookie notices, breadcrumbs, sharing and
subscription boxes, ...) are skipped, and so are link-dense lines (more than
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
# ``_Hints`` asks each only where the raw HTML holds markup it could match.
_MATH_NODES = (
    "mjx-container, script[type^='math/tex' i], math, .katex-html, [class^=MathJax], "
    "[class*=' MathJax'], [class^=MJX], [class*=' MJX'], [class^=mjx-], [class*=' mjx-']"
)
# what an <img> tag must hold for ``_LATEX_IMG`` to match it (lower case; a backslash or
# caret may be a character reference)
_LATEX_IMG_MARKS = (b"\\", b"^", b"_{", b"tex", b"codecogs", b"equation", b"formula")
_LATEX_IMG_MARKS += (b"&#92;", b"&#x5c;", b"&bsol;", b"&#94;", b"&#x5e;", b"&hat;")
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
# keyed by the class-name start as ``_Hints`` writes it (b" sidebar")
_SKIP = {
    b" " + w.encode(): f"[class^={w} i]{_NOT_PAGE}, [class*=' {w}' i]{_NOT_PAGE}"
    for w in _BOILER_WORDS
}
_MATH_CLASSES = (b" mathjax", b" mjx", b" katex-html")  # as ``_SKIP``'s keys
_MATH_TAGS = (b"<math", b"<mjx-container", b"math/tex")
# class attribute values, in lower-cased HTML (quoted: the opening quote is kept)
_CLASS_VALUE = re.compile(rb"class\s*=\s*(\"[^\"]*|'[^']*|[^\s>]+)")
_IMG_TAG = re.compile(rb"<img[^>]*")
_DISPLAY_PARENT = ".katex-display, .MathJax_Display"
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+|[\^_]\{|\^\d")
_LATEX_IMG_HINT = re.compile(r"latex|mathtex|codecogs|\btex\b|equation|formula", re.IGNORECASE)
_FILE_NAME = re.compile(r"\.(jpe?g|png|gif|svg|webp)$", re.IGNORECASE)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
_TAG = re.compile(r"<[^>\n]+>")  # within a line: ``_lines`` strips many lines at once
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


class _Hints:
    """What markup a page may hold, read from its raw HTML before the tree is queried.

    Each test is a superset of what the selectors it guards can match (only character
    references inside class names escape it). A few scans of the text cost a fraction of a
    walk of the tree, and most pages hold no formula markup and few boilerplate classes.
    """

    def __init__(self, html: str) -> None:
        low = html.encode("utf-8", "replace").lower()  # bytes: ASCII lower-casing is cheap
        # " name" for each class name at the start of a value or after a space, as the
        # selectors [class^=w] and [class*=' w'] see them
        names = b" " + b" ".join(v.lstrip(b"\"'") for v in _CLASS_VALUE.findall(low))
        self.math = any(c in names for c in _MATH_CLASSES) or any(t in low for t in _MATH_TAGS)
        self.latex_img = any(
            b"alt" in tag and any(m in tag for m in _LATEX_IMG_MARKS)
            for tag in _IMG_TAG.findall(low)
        )
        self.skip = [selector for name, selector in _SKIP.items() if name in names]


def _rewrite(tree: HTMLTree, doc: DomNode, hints: _Hints) -> int:
    """Formulas to delimited LaTeX; returns how many were found."""
    rw = _Rewriter(tree)
    if hints.math:
        rw.math(doc)
    if hints.latex_img:
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
    """resiliparse's minimal-HTML output -> text lines, without link-dense lines.

    Only lines holding a link are judged one by one; tags and character references of the
    kept lines are then removed in one pass over their text.
    """
    kept = []
    for line in minimal_html.split("\n"):
        if "</a>" in line and _OPEN not in line:
            text = html_lib.unescape(_TAG.sub("", line)).strip()
            if _link_chars(line) > max_link_density * len(text.replace(" ", "") or "x"):
                continue
        kept.append(line)
    text = html_lib.unescape(_TAG.sub("", "\n".join(kept)))
    text = text.replace(_OPEN, "").replace(_CLOSE, "")
    return "\n".join(s for line in text.split("\n") if (s := line.strip()))


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
    hints = _Hints(html)
    found = _rewrite(tree, doc, hints)
    out = extract_plain_text(
        tree,
        preserve_formatting="minimal_html",
        main_content=True,
        links=True,
        alt_texts=False,
        list_bullets=False,
        skip_elements=hints.skip,
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
