"""MathML -> LaTeX, so that MathML formulas survive text extraction (stage 2).

When a ``<math>`` element carries its TeX source (``<annotation encoding="application/x-tex">``,
as KaTeX and many converters emit), that source is used verbatim. Otherwise the presentation
MathML tree is rewritten: ``mfrac`` -> ``\\frac{a}{b}``, ``msup``/``msub``/``msubsup``,
``msqrt``/``mroot``, ``mfenced``, ``munder``/``mover``/``munderover``, ``mtable``, token
elements (``mi``/``mn``/``mo``/``mtext``) with common Unicode operators mapped to commands.
"""

from __future__ import annotations

from lxml import etree

TEX_ENCODINGS = ("application/x-tex", "text/x-tex", "application/x-latex", "tex", "latex")

# Unicode characters that MathML token elements carry, and their LaTeX commands
_SYMBOLS = {
    "α": r"\alpha",
    "β": r"\beta",
    "γ": r"\gamma",
    "δ": r"\delta",
    "ε": r"\epsilon",
    "ϵ": r"\epsilon",
    "ζ": r"\zeta",
    "η": r"\eta",
    "θ": r"\theta",
    "ι": r"\iota",
    "κ": r"\kappa",
    "λ": r"\lambda",
    "μ": r"\mu",
    "ν": r"\nu",
    "ξ": r"\xi",
    "π": r"\pi",
    "ρ": r"\rho",
    "σ": r"\sigma",
    "τ": r"\tau",
    "υ": r"\upsilon",
    "φ": r"\phi",
    "ϕ": r"\phi",
    "χ": r"\chi",
    "ψ": r"\psi",
    "ω": r"\omega",
    "Γ": r"\Gamma",
    "Δ": r"\Delta",
    "Θ": r"\Theta",
    "Λ": r"\Lambda",
    "Ξ": r"\Xi",
    "Π": r"\Pi",
    "Σ": r"\Sigma",
    "Φ": r"\Phi",
    "Ψ": r"\Psi",
    "Ω": r"\Omega",
    "∞": r"\infty",
    "≤": r"\le",
    "≥": r"\ge",
    "≠": r"\ne",
    "≈": r"\approx",
    "≡": r"\equiv",
    "×": r"\times",
    "·": r"\cdot",
    "⋅": r"\cdot",
    "÷": r"\div",
    "±": r"\pm",
    "∓": r"\mp",
    "→": r"\to",
    "←": r"\leftarrow",
    "⇒": r"\Rightarrow",
    "⇔": r"\Leftrightarrow",
    "↦": r"\mapsto",
    "∑": r"\sum",
    "∏": r"\prod",
    "∫": r"\int",
    "∮": r"\oint",
    "∂": r"\partial",
    "∇": r"\nabla",
    "∈": r"\in",
    "∉": r"\notin",
    "⊂": r"\subset",
    "⊆": r"\subseteq",
    "∪": r"\cup",
    "∩": r"\cap",
    "∅": r"\emptyset",
    "∀": r"\forall",
    "∃": r"\exists",
    "¬": r"\neg",
    "∧": r"\wedge",
    "∨": r"\vee",
    "∘": r"\circ",
    "′": "'",
    "″": "''",
    "…": r"\ldots",
    "⋯": r"\cdots",
    "−": "-",
    "∣": "|",
    "⟨": r"\langle",
    "⟩": r"\rangle",
    "√": r"\surd",
    "°": r"^\circ",
    "ℝ": r"\mathbb{R}",
    "ℕ": r"\mathbb{N}",
    "ℤ": r"\mathbb{Z}",
    "ℚ": r"\mathbb{Q}",
    "ℂ": r"\mathbb{C}",
    "\u2061": "",
    "\u2062": "",
    "\u2063": "",
    "\u00a0": " ",
}
_FUNCTIONS = frozenset(
    [
        "sin",
        "cos",
        "tan",
        "cot",
        "sec",
        "csc",
        "arcsin",
        "arccos",
        "arctan",
        "sinh",
        "cosh",
        "tanh",
        "log",
        "ln",
        "exp",
        "lim",
        "max",
        "min",
        "sup",
        "inf",
        "det",
        "gcd",
        "deg",
    ]
)
_ACCENTS = {
    "¯": r"\overline",
    "‾": r"\overline",
    "^": r"\hat",
    "ˆ": r"\hat",
    "~": r"\tilde",
    "˜": r"\tilde",
    "→": r"\vec",
    "⃗": r"\vec",
    "˙": r"\dot",
    "¨": r"\ddot",
}
_BIG_OPERATORS = frozenset([r"\sum", r"\prod", r"\int", r"\oint", r"\lim", r"\max", r"\min"])
_FENCES = {"{": r"\{", "}": r"\}"}


def local_name(el: etree._Element) -> str:
    """Tag without namespace or ``m:`` prefix, lower-cased ("" for comments and PIs)."""
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1].lower()


def tex_annotation(math: etree._Element) -> str | None:
    """The TeX source stored in a ``<math>``'s ``<annotation>``, or None when there is none."""
    for el in math.iter():
        encoding = (el.get("encoding") or "").strip().lower()
        if local_name(el) == "annotation" and encoding in TEX_ENCODINGS and (el.text or "").strip():
            return el.text.strip()
    return None


def _symbol(text: str) -> str:
    return "".join(_SYMBOLS.get(ch, ch) for ch in text)


def _group(tex: str) -> str:
    """Brace ``tex`` unless it is a single character or a single command."""
    tex = tex.strip()
    if len(tex) == 1 or (tex.startswith("\\") and tex[1:].isalpha()):
        return tex
    return "{" + tex + "}"


def _children(el: etree._Element) -> list[etree._Element]:
    return [c for c in el if local_name(c)]


def _join(parts: list[str]) -> str:
    out = ""
    for part in parts:
        # keep "\alpha x" from becoming "\alphax"
        if out and out[-1].isalpha() and part[:1].isalpha() and "\\" in out.rsplit(" ", 1)[-1]:
            out += " "
        out += part
    return out


def _convert(el: etree._Element) -> str:
    name = local_name(el)
    kids = _children(el)
    text = (el.text or "").strip()
    if name in ("mi", "ci"):
        if text in _FUNCTIONS:
            return "\\" + text
        if len(text) > 1 and text.isalpha():
            return r"\mathrm{" + text + "}"
        return _symbol(text)
    if name in ("mn", "cn"):
        return _symbol(text)
    if name == "mo":
        if text in _FUNCTIONS:
            return "\\" + text
        return _FENCES.get(text, _symbol(text))
    if name == "mtext":
        return r"\text{" + text + "}" if text else ""
    if name == "ms":
        return r'\text{"' + text + '"}'
    if name == "mspace":
        return " "
    if name == "annotation" or name == "annotation-xml" or name == "none":
        return ""
    if name == "semantics":
        return _join([_convert(c) for c in kids[:1]])
    conv = [_convert(c) for c in kids]
    if name == "mfrac" and len(conv) >= 2:
        if (el.get("linethickness") or "").strip() in ("0", "0px", "0em"):
            return r"\binom{" + conv[0] + "}{" + conv[1] + "}"
        return r"\frac{" + conv[0] + "}{" + conv[1] + "}"
    if name == "msqrt":
        return r"\sqrt{" + _join(conv) + "}"
    if name == "mroot" and len(conv) >= 2:
        return r"\sqrt[" + conv[1] + "]{" + conv[0] + "}"
    if name == "msup" and len(conv) >= 2:
        return _group(conv[0]) + "^{" + conv[1] + "}"
    if name == "msub" and len(conv) >= 2:
        return _group(conv[0]) + "_{" + conv[1] + "}"
    if name == "msubsup" and len(conv) >= 3:
        return _group(conv[0]) + "_{" + conv[1] + "}^{" + conv[2] + "}"
    if name in ("munder", "mover", "munderover") and len(conv) >= 2:
        return _under_over(name, el, kids, conv)
    if name == "mfenced":
        open_, close = el.get("open", "("), el.get("close", ")")
        seps = (el.get("separators", ",") or "").replace(" ", "")
        body = ""
        for i, part in enumerate(conv):
            if i:
                body += seps[min(i - 1, len(seps) - 1)] if seps else ""
            body += part
        return (
            r"\left"
            + _FENCES.get(open_, open_ or ".")
            + body
            + r"\right"
            + _FENCES.get(close, close or ".")
        )
    if name == "mtable":
        rows = [" & ".join(_convert(cell) for cell in _children(row)) for row in kids]
        return r"\begin{matrix}" + r" \\ ".join(rows) + r"\end{matrix}"
    if name == "menclose" and "box" in (el.get("notation") or ""):
        return r"\boxed{" + _join(conv) + "}"
    if name in ("merror", "maction") and conv:
        return conv[0]
    # math, mrow, mstyle, mpadded, mphantom, menclose, mtd, ... : concatenate
    return _join(conv)


def _under_over(name: str, el: etree._Element, kids: list, conv: list[str]) -> str:
    base = conv[0]
    if name == "munderover" and len(conv) >= 3:
        return _group(base) + "_{" + conv[1] + "}^{" + conv[2] + "}"
    script = conv[1]
    if name == "mover":
        accent = (kids[1].text or "").strip() if local_name(kids[1]) == "mo" else ""
        if accent in _ACCENTS:
            return _ACCENTS[accent] + "{" + base + "}"
        if base in _BIG_OPERATORS:
            return base + "^{" + script + "}"
        return r"\overset{" + script + "}{" + base + "}"
    if base in _BIG_OPERATORS:
        return base + "_{" + script + "}"
    if local_name(kids[1]) == "mo" and (kids[1].text or "").strip() in ("_", "¯", "‾"):
        return r"\underline{" + base + "}"
    return r"\underset{" + script + "}{" + base + "}"


def mathml_to_latex(math: etree._Element) -> str:
    """LaTeX for a ``<math>`` element: its TeX annotation if present, else converted MathML."""
    annotated = tex_annotation(math)
    if annotated is not None:
        return annotated
    return " ".join(_convert(math).split())


def is_display(math: etree._Element) -> bool:
    """Whether a ``<math>`` element is display (block) math."""
    return (math.get("display") or "").lower() == "block" or (math.get("mode") or "") == "display"
