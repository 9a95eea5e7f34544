"""Synthetic web pages for tests and the quickstart: math pages in every markup the extractor
must read, non-math pages, boilerplate, URL duplicates and near-duplicates.

Math pages render GSM8K *train* questions (their ``<<48/2=24>>`` calculator notes become
formulas) and MATH-style problems built from templates, each page in one markup style:
``mathjax`` (``<script type="math/tex">`` + rendered preview), ``katex`` (MathML with a TeX
annotation + a rendered HTML copy), ``mathml`` (bare presentation MathML), ``dollars``
(``$...$`` in the text) or ``alt`` (LaTeX in ``<img alt>``). Non-math pages are generated prose
on everyday topics. ``synthetic_warc`` writes them as WARC files.
"""

from __future__ import annotations

import html
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

STYLES = ("mathjax", "katex", "mathml", "dollars", "alt")
MATH_DOMAINS = ("mathhelp-forum.example.org", "algebra-tutor.example.com", "calc-notes.example.edu")
MIXED_DOMAIN = "learn-hub.example.net"  # math under /math/, everything else elsewhere
TOPICS = {
    "cooking": "recipe oven garlic onion butter simmer sauce flour dough bake salad pepper basil roast",
    "travel": "hotel beach flight museum passport itinerary island hiking train harbor market castle",
    "sports": "league striker goalkeeper season coach tournament stadium referee champion penalty",
    "gardening": "tomato compost seedling soil mulch pruning orchard watering rose shade hedge bulbs",
    "music": "guitar chorus album melody drummer concert vinyl rhythm lyrics studio acoustic band",
    "pets": "puppy kitten leash vet grooming treats aquarium parrot litter collar adoption walk",
}
_FILLER = [
    "the",
    "a",
    "our",
    "this",
    "every",
    "their",
    "with",
    "after",
    "before",
    "during",
    "while",
    "because",
    "although",
]
_VERBS = [
    "makes",
    "keeps",
    "brings",
    "shows",
    "needs",
    "loves",
    "finds",
    "changes",
    "offers",
    "covers",
    "starts",
    "leaves",
]


@dataclass
class Formula:
    """One formula in two notations."""

    latex: str
    mathml: str


@dataclass
class SyntheticPage:
    """What a generated page is, for tests to check the pipeline against."""

    url: str
    kind: str  # "math" | "nonmath"
    style: str  # markup style of its formulas ("" for non-math)
    domain: str
    latex: list[str] = field(default_factory=list)  # formulas planted in the page
    duplicate_of: str | None = None  # an earlier page with the same normalised URL
    near_duplicate_of: str | None = None  # an earlier page with almost the same text


def _num(x: str) -> str:
    return f"<mn>{x}</mn>" if re.fullmatch(r"[\d.]+", x) else f"<mi>{html.escape(x)}</mi>"


def frac(a: str, b: str) -> Formula:
    return Formula(rf"\frac{{{a}}}{{{b}}}", f"<mfrac>{_num(a)}{_num(b)}</mfrac>")


def power(base: str, exp: str) -> Formula:
    return Formula(f"{base}^{{{exp}}}", f"<msup>{_num(base)}{_num(exp)}</msup>")


def sqrt(x: str) -> Formula:
    return Formula(rf"\sqrt{{{x}}}", f"<msqrt>{_num(x)}</msqrt>")


def concat(*parts: Formula | str) -> Formula:
    """Join formulas and operator strings ("+", "=", "x", ...) into one formula."""
    latex, mathml = [], []
    for p in parts:
        if isinstance(p, Formula):
            latex.append(p.latex)
            mathml.append(p.mathml)
        else:
            op = {"*": r"\times", "x": r"\times"}.get(p, p)
            latex.append(op)
            mo = {"*": "×", "x": "×", r"\cdot": "·", r"\le": "≤", r"\pi": "π"}.get(p, p)
            mathml.append(
                _num(mo) if re.fullmatch(r"[\d.]+|[a-z]", mo) else f"<mo>{html.escape(mo)}</mo>"
            )
    return Formula(" ".join(latex), "<mrow>" + "".join(mathml) + "</mrow>")


def _calc_formula(expr: str, result: str) -> Formula:
    """A GSM8K calculator note ``48/2=24`` as a formula (``\\frac{48}{2} = 24``)."""
    m = re.fullmatch(r"([\d.]+)/([\d.]+)", expr)
    if m:
        return concat(frac(m.group(1), m.group(2)), "=", Formula(result, _num(result)))
    tokens = re.findall(r"[\d.]+|[-+*/()]", expr)
    parts: list[Formula | str] = [Formula(t, _num(t)) if t[0].isdigit() else t for t in tokens]
    return concat(*parts, "=", Formula(result, _num(result)))


def _math_style_problem(rng: random.Random) -> tuple[str, list[Formula]]:
    """A MATH-style problem with solution: text with ``{}`` slots and the formulas for them."""
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    kind = rng.randrange(4)
    if kind == 0:
        return (
            f"Simplify the fraction {{}} and write the result as a power of {a}. Since {{}}, the answer is {{}}.",
            [
                frac(str(a**5), str(a**2)),
                concat(power(str(a), "5"), "/", power(str(a), "2"), "=", power(str(a), "3")),
                power(str(a), "3"),
            ],
        )
    if kind == 1:
        return (
            f"Find the positive root of {{}}. Taking square roots, {{}}, so x = {a * b}.",
            [
                concat(power("x", "2"), "=", Formula(str((a * b) ** 2), _num(str((a * b) ** 2)))),
                concat("x", "=", sqrt(str((a * b) ** 2))),
            ],
        )
    if kind == 2:
        return (
            "Evaluate {}. Adding the fractions over a common denominator gives {}.",
            [concat(frac("1", str(a)), "+", frac("1", str(b))), frac(str(a + b), str(a * b))],
        )
    return (
        f"A circle has radius {a}. Its area is {{}} and its circumference is {{}}; the ratio of area to circumference is {{}}.",
        [concat(r"\pi", power(str(a), "2")), concat("2", r"\pi", str(a)), frac(str(a), "2")],
    )


def _render(f: Formula, style: str, display: bool = False) -> str:
    tex = html.escape(f.latex, quote=False)
    if style == "mathjax":
        mode = "; mode=display" if display else ""
        return f'<span class="MathJax_Preview">{tex}</span><script type="math/tex{mode}">{tex}</script>'
    if style == "katex":
        rendered = re.sub(r"[\\{}^_]", "", f.latex)
        span = (
            f'<span class="katex"><span class="katex-mathml"><math><semantics>{f.mathml}'
            f'<annotation encoding="application/x-tex">{tex}</annotation></semantics></math></span>'
            f'<span class="katex-html" aria-hidden="true"><span class="mord">{html.escape(rendered)}</span></span></span>'
        )
        return f'<span class="katex-display">{span}</span>' if display else span
    if style == "mathml":
        return f'<math display="{"block" if display else "inline"}">{f.mathml}</math>'
    if style == "alt":
        q = html.escape(f.latex, quote=True)
        return (
            f'<img class="latex" src="https://s0.wp.com/latex.php?latex={q}" alt="{q}" title="{q}">'
        )
    return f"$${tex}$$" if display else f"${tex}$"


def _boilerplate(rng: random.Random, domain: str, body: str, title: str) -> str:
    links = " ".join(
        f'<li><a href="https://{domain}/{w}/">{w.title()}</a></li>'
        for w in rng.sample(_FILLER + _VERBS, 6)
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<script>window.dataLayer=[];function gtag(){dataLayer.push(arguments);}</script>"
        "<style>body{font-family:sans-serif}</style></head><body>"
        f'<header class="site-header"><a href="/">{domain}</a></header>'
        f'<nav class="main-nav"><ul>{links}</ul></nav>'
        f'<div class="content"><article><h1>{html.escape(title)}</h1>{body}</article></div>'
        f'<aside class="sidebar"><h3>Popular</h3><ul>{links}</ul></aside>'
        '<div class="cookie-banner">We use cookies to improve your experience. <button>Accept</button></div>'
        f"<footer>© 2024 {domain} · <a href='/privacy'>Privacy</a></footer></body></html>"
    )


def _math_page(
    rng: random.Random, style: str, question: str | None, answer: str | None
) -> tuple[str, str, list[str]]:
    """(title, body html, planted latex) of one math page."""
    paras, planted = [], []
    if question is not None:
        paras.append(f"<p><strong>Problem.</strong> {html.escape(question)}</p>")
        for line in (answer or "").split("\n"):
            if line.startswith("####"):
                paras.append(f"<p>The final answer is {html.escape(line[4:].strip())}.</p>")
                continue
            chunks = re.split(r"<<([^=>]+)=([^>]+)>>", line)
            out = html.escape(chunks[0])
            for i in range(1, len(chunks) - 2, 3):
                f = _calc_formula(chunks[i], chunks[i + 1])
                planted.append(f.latex)
                out += " " + _render(f, style) + " " + html.escape(chunks[i + 2])
            paras.append(f"<p>{out}</p>")
    for _ in range(rng.randint(1, 2)):
        template, formulas = _math_style_problem(rng)
        parts = template.split("{}")
        out = html.escape(parts[0])
        for i, f in enumerate(formulas):
            planted.append(f.latex)
            out += _render(
                f, style, display=(i == len(formulas) - 1 and rng.random() < 0.4)
            ) + html.escape(parts[i + 1])
        paras.append(f"<p>{out}</p>")
    title = (question or "Worked example")[:60]
    return title, "".join(paras), planted


_TEMPLATES = (
    "I think the {n} is the best part of {n2}, because it {v} the {a} {n3}.",
    "Last week we {vp} a {a} {n} and it was really {a2}.",
    "If you have never {vp} {n} before, start with the {a} {n2} and take your time.",
    "Our {n} {v} every {n2} that people bring to the {n3}.",
    "She told me that the {n} on the {n2} was {a} and that we should come back in {month}.",
    "There is nothing like a {a} {n} after a long day of {n2}.",
    "Many of you asked how we {vp} the {n}; the answer is simple: patience and a {a} {n2}.",
    "The {n} was {a}, the {n2} was {a2}, and everyone loved the {n3}.",
    "You can find more about the {n} in our guide to {n2} and {n3}.",
    "He said it {v} the {n} better than any {n2} he had tried.",
)
_ADJ = [
    "beautiful",
    "quiet",
    "busy",
    "cheap",
    "fresh",
    "old",
    "famous",
    "cozy",
    "bright",
    "lovely",
    "simple",
    "rainy",
    "friendly",
    "tiny",
]
_PAST = [
    "visited",
    "tried",
    "cooked",
    "found",
    "watched",
    "planted",
    "bought",
    "cleaned",
    "painted",
    "booked",
    "enjoyed",
]
_MONTHS = ["January", "March", "May", "July", "September", "November"]


def _prose(rng: random.Random, topic: str, n_sentences: int) -> str:
    nouns = TOPICS[topic].split()
    out = []
    for _ in range(n_sentences):
        out.append(
            rng.choice(_TEMPLATES).format(
                n=rng.choice(nouns),
                n2=rng.choice(nouns),
                n3=rng.choice(nouns),
                v=rng.choice(_VERBS),
                vp=rng.choice(_PAST),
                a=rng.choice(_ADJ),
                a2=rng.choice(_ADJ),
                month=rng.choice(_MONTHS),
            )
        )
    return " ".join(out)


def _gsm8k(path: Path | None) -> list[dict]:
    if path is None or not Path(path).is_file():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def default_gsm8k_train() -> Path:
    """``../shared/data/benchmarks/gsm8k/train.jsonl`` beside the checkout."""
    return (
        Path(__file__).resolve().parents[1].parent
        / "shared"
        / "data"
        / "benchmarks"
        / "gsm8k"
        / "train.jsonl"
    )


def write_seed_jsonl(
    path: str | Path,
    *,
    n: int = 200,
    seed: int = 1,
    gsm8k_path: str | Path | None = None,
    gsm8k_offset: int = 5000,
) -> int:
    """Write ``n`` math documents (``{"id", "text"}`` per line) as a stand-in seed corpus.

    The paper seeds with OpenWebMath; offline we write GSM8K train solutions (rows from
    ``gsm8k_offset`` on, away from the pages of ``write_synthetic_warc``) and MATH-style
    problems with their LaTeX, as extracted text. Returns the number of lines written.
    """
    rng = random.Random(seed)
    gsm = _gsm8k(Path(gsm8k_path) if gsm8k_path else default_gsm8k_train())[gsm8k_offset:]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            parts = []
            if i < len(gsm) and i % 2 == 0:
                answer = re.sub(
                    r"<<([^=>]+)=([^>]+)>>",
                    lambda m: "$" + _calc_formula(m[1], m[2]).latex + "$ ",
                    gsm[i]["answer"],
                )
                parts += [gsm[i]["question"], answer.replace("####", "The answer is")]
            for _ in range(rng.randint(1, 3)):
                template, formulas = _math_style_problem(rng)
                pieces = template.split("{}")
                parts.append(
                    pieces[0]
                    + "".join(f"${fm.latex}$" + pieces[j + 1] for j, fm in enumerate(formulas))
                )
            f.write(json.dumps({"id": f"seed-{i}", "text": "\n".join(parts)}) + "\n")
    return n


def manifest_json(pages: list[SyntheticPage]) -> str:
    """The manifest as JSON (for the quickstart's run folder)."""
    return json.dumps([asdict(p) for p in pages], indent=1)
