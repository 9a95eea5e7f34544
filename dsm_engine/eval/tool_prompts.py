"""Prompts for the two tool formats: program-of-thought (PoT) and tool-integrated (TIR).

PoT (the paper's Table 3, few-shot for base models): the model answers with a Python program
and the program's last printed line is the answer. TIR (Table 5): prose interleaved with
``` ```python`` blocks whose output is fed back in ``` ```output`` blocks, final answer in
``\\boxed{}``. The layout follows the chain-of-thought prompts (``prompts.py``).

Exemplars were written for this project: the English word problems are GSM8K *train*
questions, the others are questions in the style of MATH, CMATH and MGSM; none comes from a
test set. MATH programs print ``sympy.latex(...)`` so that their output grades like a boxed
answer.
"""

from __future__ import annotations

from dsm_engine.eval.benchmarks import Example
from dsm_engine.eval.prompts import _LABELS

__all__ = [
    "POT_BENCHES",
    "TIR_BENCHES",
    "TIR_INSTRUCTIONS",
    "build_pot_prompt",
    "build_tir_prompt",
    "pot_stop_strings",
]

POT_INSTRUCTION = "Write a Python program that prints the final answer."
TIR_INSTRUCTIONS = {
    "en": "Please integrate natural language reasoning with programs to solve the problem "
    "above, and put your final answer within \\boxed{}.",
    "zh": "请结合自然语言和 Python 程序来解答上面的问题，并把最终答案写在 \\boxed{} 中。",
}
# where the paper reports each format (Table 3: PoT on GSM8K and MATH; Table 5: TIR also on
# MGSM-zh and CMATH); MATH500 is a MATH subset
POT_BENCHES = ("gsm8k", "math", "math500")
TIR_BENCHES = ("gsm8k", "math", "math500", "cmath", "mgsm-zh")

_POT_WORD = [
    (
        "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, "
        "she read twice as many pages as yesterday. If she wants to read half of the remaining "
        "pages tomorrow, how many pages should she read?",
        "total_pages = 120\nyesterday = 12\ntoday = 2 * yesterday\n"
        "remaining = total_pages - yesterday - today\nprint(remaining // 2)\n",
    ),
    (
        "Randy has 60 mango trees on his farm. He also has 5 less than half as many coconut "
        "trees as mango trees. How many trees does Randy have in all on his farm?",
        "mango = 60\ncoconut = mango // 2 - 5\nprint(mango + coconut)\n",
    ),
    (
        "Ralph is going to practice playing tennis with a tennis ball machine that shoots out "
        "tennis balls for Ralph to hit. He loads up the machine with 175 tennis balls to start "
        "with. Out of the first 100 balls, he manages to hit 2/5 of them. Of the next 75 tennis "
        "balls, he manages to hit 1/3 of them. Out of all the tennis balls, how many did Ralph "
        "not hit?",
        "from fractions import Fraction\n\n"
        "hit = 100 * Fraction(2, 5) + 75 * Fraction(1, 3)\nprint(175 - hit)\n",
    ),
    (
        "Ken created a care package to send to his brother, who was away at boarding school. "
        "Ken placed a box on a scale, and then he poured into the box enough jelly beans to "
        "bring the weight to 2 pounds. Then, he added enough brownies to cause the weight to "
        "triple. Next, he added another 2 pounds of jelly beans. And finally, he added enough "
        "gummy worms to double the weight once again. What was the final weight of the box of "
        "goodies, in pounds?",
        "weight = 2\nweight *= 3\nweight += 2\nweight *= 2\nprint(weight)\n",
    ),
]
_POT_MATH = [
    (
        "Find the sum of all real solutions of $x^2 - 7x + 10 = 0$.",
        "import sympy as sp\n\nx = sp.symbols('x')\nroots = sp.solve(x**2 - 7*x + 10, x)\n"
        "print(sp.latex(sum(roots)))\n",
    ),
    (
        "Simplify $\\sqrt{50} + \\sqrt{18}$.",
        "import sympy as sp\n\nprint(sp.latex(sp.sqrt(50) + sp.sqrt(18)))\n",
    ),
    (
        "What is the remainder when $7^{100}$ is divided by $13$?",
        "print(pow(7, 100, 13))\n",
    ),
    (
        "Two fair six-sided dice are rolled. What is the probability that the sum is $8$? "
        "Express your answer as a common fraction.",
        "import sympy as sp\n\nfavourable = sum(1 for a in range(1, 7) for b in range(1, 7) "
        "if a + b == 8)\nprint(sp.latex(sp.Rational(favourable, 36)))\n",
    ),
]
_TIR_EN = [
    (
        "Randy has 60 mango trees on his farm. He also has 5 less than half as many coconut "
        "trees as mango trees. How many trees does Randy have in all on his farm?",
        "Half as many coconut trees as mango trees is 60 / 2, and Randy has 5 fewer than that. "
        "Let me add up the trees.\n```python\nmango = 60\ncoconut = mango // 2 - 5\n"
        "print(mango + coconut)\n```\n```output\n85\n```\n"
        "Randy has \\boxed{85} trees in all.",
    ),
    (
        "Find the sum of all real solutions of $x^2 - 7x + 10 = 0$.",
        "I will solve the quadratic and add its roots.\n```python\nimport sympy as sp\n\n"
        "x = sp.symbols('x')\nroots = sp.solve(x**2 - 7*x + 10, x)\nprint(roots, sum(roots))\n"
        "```\n```output\n[2, 5] 7\n```\nThe solutions are 2 and 5, so their sum is \\boxed{7}.",
    ),
]
_TIR_ZH = [
    (
        "学校买来 6 箱粉笔，每箱 48 盒，平均分给 9 个班，每个班分到多少盒？",
        "先算出粉笔的总盒数，再平均分给 9 个班。\n```python\ntotal = 6 * 48\n"
        "print(total, total / 9)\n```\n```output\n288 32.0\n```\n"
        "一共 288 盒，每个班分到 \\boxed{32} 盒。",
    ),
    (
        "一辆汽车 3 小时行驶 180 千米，照这样的速度，5 小时行驶多少千米？",
        "先求速度，再乘以时间。\n```python\nspeed = 180 / 3\nprint(speed * 5)\n```\n"
        "```output\n300.0\n```\n5 小时行驶 \\boxed{300} 千米。",
    ),
]


def _take(pool: list[tuple[str, str]], k: int, what: str) -> list[tuple[str, str]]:
    if k > len(pool):
        raise ValueError(f"--shots {k}: only {len(pool)} {what} exemplars exist")
    return pool[:k]


def build_pot_prompt(example: Example, shots: int = 0) -> str:
    """Program-of-thought prompt: exemplar programs, then the question and an open
    ``` ```python`` block for the model to fill (its program ends at the closing fence)."""
    if example.lang != "en":
        raise ValueError(f"program-of-thought prompts are English only (question {example.id})")
    pool = _POT_MATH if example.kind == "math" else _POT_WORD
    q_label = _LABELS["en"][0]
    blocks = [
        f"{q_label}: {q}\n{POT_INSTRUCTION}\n```python\n{program}```"
        for q, program in _take(pool, shots, f"{example.kind} program-of-thought")
    ]
    blocks.append(f"{q_label}: {example.question}\n{POT_INSTRUCTION}\n```python\n")
    return "\n\n".join(blocks)


def pot_stop_strings(example: Example) -> list[str]:
    """A PoT completion ends at the block's closing fence (or a next question)."""
    return ["```", f"\n\n{_LABELS['en'][0]}:"]


def build_tir_prompt(example: Example, shots: int = 0) -> str:
    """Tool-integrated prompt: ``shots`` worked solutions that run code, then the question."""
    lang = "zh" if example.lang == "zh" else "en"
    q_label, a_label = _LABELS[lang]
    instruction = TIR_INSTRUCTIONS[lang]
    pool = _TIR_ZH if lang == "zh" else _TIR_EN
    blocks = [
        f"{q_label}: {q}\n{instruction}\n{a_label}: {solution}"
        for q, solution in _take(pool, shots, f"{lang} tool-integrated")
    ]
    blocks.append(f"{q_label}: {example.question}\n{instruction}\n{a_label}:")
    return "\n\n".join(blocks)
