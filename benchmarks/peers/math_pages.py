"""A labelled set of math web pages whose formulas are known, in the markup styles found on
the web, for scoring how much math an HTML-to-text extractor keeps.

TeX-source styles render real MATH test problems and solutions (their ``$...$`` formulas):
``tex-in-text`` (the TeX left in the page for MathJax to typeset in the browser),
``mathjax2-script`` (``<script type="math/tex">`` with its preview), ``katex`` (server-side
KaTeX: MathML with a TeX annotation plus the HTML rendering), ``wikipedia`` (MediaWiki's hidden
MathML with a ``{\\displaystyle ...}`` annotation plus a fallback image whose alt is the TeX) and
``wp-latex`` (WordPress LaTeX images, TeX in ``alt``). MathML-only styles (``mathml``,
``mathjax3-svg``: an SVG rendering with assistive MathML) carry no TeX, so their formulas are
generated together with their LaTeX (``synthetic_pages.frac``/``power``/``sqrt``/``concat``).

A formula survives when its LaTeX, whitespace removed, occurs in the extracted text with
whitespace removed; formulas shorter than ``MIN_CHARS`` such characters are not scored (``$x$``
would "survive" in any text that mentions x).
"""

from __future__ import annotations

import html
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from dsm_engine.data_pipeline.synthetic_pages import Formula, concat, frac, power, sqrt

TEX_STYLES = ("tex-in-text", "mathjax2-script", "katex", "wikipedia", "wp-latex")
MATHML_STYLES = ("mathml", "mathjax3-svg")
STYLES = TEX_STYLES + MATHML_STYLES
MIN_CHARS = 3
_MATH_SPLIT = re.compile(r"(\$\$.+?\$\$|\$.+?\$|\\\[.+?\\\]|\\\(.+?\\\))", re.DOTALL)
_WS = re.compile(r"\s+")


@dataclass
class LabelledPage:
    """One page: its HTML, markup style and the LaTeX of every formula it holds."""

    style: str
    html: str
    formulas: list[str] = field(default_factory=list)


def normalise(text: str) -> str:
    return _WS.sub("", text)


def scored(formulas: list[str]) -> list[str]:
    """The formulas that count (long enough not to match by chance)."""
    return [f for f in formulas if len(normalise(f)) >= MIN_CHARS]


def survived(formulas: list[str], text: str) -> int:
    """How many of ``formulas`` occur (whitespace aside) in ``text``."""
    flat = normalise(text)
    return sum(normalise(f) in flat for f in formulas)


def _tokens_mathml(tex: str) -> str:
    """A flat presentation-MathML stand-in for a formula whose TeX is kept in an annotation."""
    parts = re.findall(r"\\[A-Za-z]+|[A-Za-z]|\d+|\S", tex)
    tags = {True: "mi", False: "mo"}
    return "".join(
        f"<mn>{p}</mn>"
        if p.isdigit()
        else f"<{tags[p.isalpha()]}>{html.escape(p)}</{tags[p.isalpha()]}>"
        for p in parts
        if not p.startswith("\\") and p not in "{}"
    )


def _rendered(tex: str) -> str:
    """What a typeset formula's HTML text looks like: the TeX without commands and braces."""
    return html.escape(re.sub(r"\\[A-Za-z]+|[{}^_\\]", "", tex))


def render(tex: str, mathml: str | None, style: str, display: bool, i: int) -> str:
    """HTML of one formula in ``style`` (``mathml``: its presentation MathML, or None)."""
    esc = html.escape(tex, quote=False)
    if style == "tex-in-text":
        return f"$${esc}$$" if display else f"${esc}$"
    if style == "mathjax2-script":
        mode = "; mode=display" if display else ""
        return (
            f'<span class="MathJax_Preview" style="color: inherit;">{esc}</span>'
            f'<script type="math/tex{mode}" id="MathJax-Element-{i}">{tex}</script>'
        )
    if style == "katex":
        span = (
            '<span class="katex"><span class="katex-mathml"><math xmlns="http://www.w3.org/1998/Math/MathML">'
            f"<semantics><mrow>{_tokens_mathml(tex)}</mrow>"
            f'<annotation encoding="application/x-tex">{esc}</annotation></semantics></math></span>'
            f'<span class="katex-html" aria-hidden="true"><span class="base"><span class="mord mathnormal">'
            f"{_rendered(tex)}</span></span></span></span>"
        )
        return f'<span class="katex-display">{span}</span>' if display else span
    if style == "wikipedia":
        kind = "display" if display else "inline"
        wrapped = html.escape("{\\displaystyle " + tex + "}", quote=True)
        return (
            f'<span class="mwe-math-element"><span class="mwe-math-mathml-{kind} mwe-math-mathml-a11y" '
            f'style="display: none;"><math xmlns="http://www.w3.org/1998/Math/MathML" alttext="{wrapped}">'
            f'<semantics><mrow class="MJX-TeXAtom-ORD"><mstyle displaystyle="true" scriptlevel="0">'
            f"{_tokens_mathml(tex)}</mstyle></mrow>"
            f'<annotation encoding="application/x-tex">{wrapped}</annotation></semantics></math></span>'
            f'<img src="https://wikimedia.org/api/rest_v1/media/math/render/svg/{i:040x}" '
            f'class="mwe-math-fallback-image-{kind} mw-invert skin-invert" aria-hidden="true" '
            f'style="vertical-align: -0.338ex; width:9ex; height:2.5ex;" alt="{wrapped}"></span>'
        )
    if style == "wp-latex":
        q = html.escape(tex, quote=True)
        return (
            f'<img src="https://s0.wp.com/latex.php?latex={quote(tex)}&#038;bg=ffffff&#038;fg=000000&#038;s=0" '
            f'alt="{q}" title="{q}" class="latex">'
        )
    if mathml is None:
        raise ValueError(f"style {style!r} needs the formula's MathML")
    if style == "mathml":
        return f'<math display="{"block" if display else "inline"}">{mathml}</math>'
    if style == "mathjax3-svg":
        disp = ' display="true"' if display else ""
        return (
            f'<mjx-container class="MathJax" jax="SVG"{disp}><svg xmlns="http://www.w3.org/2000/svg" '
            f'width="9ex" height="2.5ex" role="img" focusable="false"><g><text>{_rendered(tex)}</text></g></svg>'
            f'<mjx-assistive-mml unselectable="on" display="{"block" if display else "inline"}">'
            f'<math xmlns="http://www.w3.org/1998/Math/MathML">{mathml}</math></mjx-assistive-mml></mjx-container>'
        )
    raise ValueError(f"unknown style {style!r}")


def _wrap(title: str, body: str, rng: random.Random) -> str:
    """A page around ``body``: head scripts, header, navigation, sidebar, cookie banner, footer."""
    links = "".join(
        f'<li><a href="/topic/{k}">Topic {k}</a></li>' for k in rng.sample(range(50), 6)
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<script>window.MathJax={tex:{inlineMath:[["$","$"]]}};</script>'
        "<style>.sidebar{float:right}</style></head><body>"
        '<header class="site-header"><a href="/">Math help</a></header>'
        f'<nav class="main-nav"><ul>{links}</ul></nav>'
        f"<main><article><h1>{html.escape(title)}</h1>{body}</article></main>"
        f'<aside class="sidebar"><h3>Related</h3><ul>{links}</ul></aside>'
        '<div class="cookie-banner">We use cookies. <button>OK</button></div>'
        "<footer>© 2024 Math help · <a href='/privacy'>Privacy</a></footer></body></html>"
    )


def _paragraph(text: str, style: str, formulas: list[str], counter: list[int]) -> str:
    """A paragraph of MATH text with each delimited formula rendered in ``style``."""
    out = []
    for part in _MATH_SPLIT.split(text):
        if not _MATH_SPLIT.fullmatch(part):
            out.append(html.escape(part))
            continue
        display = part.startswith(("$$", "\\["))
        tex = part[2:-2] if display or part.startswith("\\(") else part[1:-1]
        tex = tex.strip()
        if not tex:
            continue
        counter[0] += 1
        formulas.append(tex)
        out.append(render(tex, None, style, display, counter[0]))
    return "<p>" + "".join(out) + "</p>"


def _mathml_formula(rng: random.Random) -> Formula:
    a, b, c, d = (str(rng.randint(2, 19)) for _ in range(4))
    kind = rng.randrange(4)
    if kind == 0:
        return concat(frac(a, b), "+", frac(c, d))
    if kind == 1:  # a one-digit base: "10^{2}" would be TeX for 1·0², not (10)²
        return concat(power("x", "2"), "+", power("y", "2"), "=", power(a[-1], "2"))
    if kind == 2:
        return concat("x", "=", sqrt(a), "x", sqrt(b))
    return concat(r"\pi", power("r", "2"), r"\le", frac(a, "2"))


def _mathml_page(style: str, rng: random.Random, counter: list[int]) -> tuple[str, list[str]]:
    formulas, paras = [], []
    for _ in range(rng.randint(3, 6)):
        f = _mathml_formula(rng)
        counter[0] += 1
        display = rng.random() < 0.3
        formulas.append(f.latex)
        paras.append(
            f"<p>Consider {render(f.latex, f.mathml, style, display, counter[0])} "
            "and simplify it step by step before comparing both sides.</p>"
        )
    return "".join(paras), formulas


def build_pages(math_jsonl: Path, *, per_style: int = 20, seed: int = 0) -> list[LabelledPage]:
    """``per_style`` pages in each of ``STYLES``; TeX styles from MATH rows of ``math_jsonl``
    (problem + solution, pages with Asymptote code skipped)."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in math_jsonl.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "[asy]" not in r["problem"] + r["solution"]]
    pages, k, counter = [], 0, [0]
    for style in STYLES:
        for _ in range(per_style):
            formulas: list[str] = []
            if style in TEX_STYLES:
                row = rows[k % len(rows)]
                k += 1
                body = _paragraph(row["problem"], style, formulas, counter)
                body += "<h2>Solution</h2>"
                body += "".join(
                    _paragraph(p, style, formulas, counter) for p in row["solution"].split("\n\n")
                )
                title = f"{row.get('type', 'Math')} problem {row.get('idx', k)}"
            else:
                body, formulas = _mathml_page(style, rng, counter)
                title = f"Worked example {counter[0]}"
            pages.append(LabelledPage(style, _wrap(title, body, rng), formulas))
    return pages
