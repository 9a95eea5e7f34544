"""Chain-of-thought prompt templates, zero- and few-shot.

Few-shot exemplars never come from a test set: English ones are GSM8K *train* solutions
(calculator annotations removed, the final answer restated in ``\\boxed{}``); the Chinese
ones below were written for this project in the style of CMATH / Gaokao questions.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from dsm_engine.eval.benchmarks import Example

__all__ = ["INSTRUCTIONS", "build_prompt", "few_shot_exemplars", "stop_strings"]

INSTRUCTIONS = {
    "en": "Please reason step by step, and put your final answer within \\boxed{}.",
    "zh": "请一步一步地推理，并把最终答案写在 \\boxed{} 中。",
    "choice": "请一步一步地推理，并把正确选项的字母写在 \\boxed{} 中。",
    "cloze": "请一步一步地推理，并把每个空的答案依次写在 \\boxed{} 中，多个空用分号隔开。",
}
_LABELS = {"en": ("Question", "Answer"), "zh": ("问题", "解答")}

# (question, worked solution) pairs written for this project
_ZH_EXEMPLARS = [
    (
        "小明有 25 张邮票，小红的邮票比小明多 8 张，两人一共有多少张邮票？",
        "小红有 25 + 8 = 33 张邮票，两人一共有 25 + 33 = 58 张。所以答案是 \\boxed{58}。",
    ),
    (
        "一根绳子长 12 米，剪去它的 $\\frac{1}{4}$ 后，还剩多少米？",
        "剪去 12 × 1/4 = 3 米，还剩 12 - 3 = 9 米。所以答案是 \\boxed{9}。",
    ),
    (
        "学校买来 6 箱粉笔，每箱 48 盒，平均分给 9 个班，每个班分到多少盒？",
        "一共有 6 × 48 = 288 盒，每个班分到 288 ÷ 9 = 32 盒。所以答案是 \\boxed{32}。",
    ),
    (
        "一个长方形的长是 7.5 厘米，宽是 4 厘米，它的面积是多少平方厘米？",
        "面积等于长乘宽：7.5 × 4 = 30 平方厘米。所以答案是 \\boxed{30}。",
    ),
    (
        "商店里一支钢笔 15 元，比一个书包便宜 27 元，买一个书包和两支钢笔一共要多少元？",
        "书包 15 + 27 = 42 元，两支钢笔 2 × 15 = 30 元，一共 42 + 30 = 72 元。所以答案是 \\boxed{72}。",
    ),
    (
        "水果店运来苹果 240 千克，第一天卖出总数的 $\\frac{3}{8}$，第一天卖出多少千克？",
        "第一天卖出 240 × 3/8 = 90 千克。所以答案是 \\boxed{90}。",
    ),
    (
        "一辆汽车 3 小时行驶 180 千米，照这样的速度，5 小时行驶多少千米？",
        "速度是 180 ÷ 3 = 60 千米每小时，5 小时行驶 60 × 5 = 300 千米。所以答案是 \\boxed{300}。",
    ),
    (
        "妈妈买了 2.5 千克香蕉，每千克 6.4 元，付了 20 元，应找回多少元？",
        "香蕉共 2.5 × 6.4 = 16 元，应找回 20 - 16 = 4 元。所以答案是 \\boxed{4}。",
    ),
]
_CHOICE_EXEMPLARS = [
    (
        "已知集合 $A=\\{1,2,3\\}, B=\\{2,3,4\\}$, 则 $A \\cap B=$ ( )",
        ["(A)$\\{1\\}$", "(B)$\\{2,3\\}$", "(C)$\\{1,2,3,4\\}$", "(D)$\\{4\\}$"],
        "$A$ 与 $B$ 的公共元素是 2 和 3，所以 $A \\cap B=\\{2,3\\}$。故选 \\boxed{B}。",
    ),
    (
        "函数 $f(x)=x^{2}-4x+5$ 的最小值为 ( )",
        ["(A)$5$", "(B)$4$", "(C)$1$", "(D)$-1$"],
        "$f(x)=(x-2)^{2}+1$，当 $x=2$ 时取得最小值 1。故选 \\boxed{C}。",
    ),
    (
        "下列函数中，既是奇函数又在 $(0,+\\infty)$ 上单调递增的是 ( )",
        ["(A)$y=x^{3}$", "(B)$y=x^{2}$", "(C)$y=-x$", "(D)$y=x+1$"],
        "$y=x^{2}$ 与 $y=x+1$ 不是奇函数；$y=-x$ 是奇函数但单调递减；$y=x^{3}$ 是奇函数且单调递增。故选 \\boxed{A}。",
    ),
]
_CLOZE_EXEMPLARS = [
    (
        "已知等差数列 $\\{a_n\\}$ 中 $a_1=2, a_3=8$，则公差 $d=$______",
        "由 $a_3=a_1+2d$ 得 $8=2+2d$，所以 $d=3$。答案是 \\boxed{3}。",
    ),
    (
        "已知 $\\sin \\alpha=\\frac{3}{5}$，且 $\\alpha$ 为锐角，则 $\\cos \\alpha=$______",
        "因为 $\\alpha$ 为锐角，$\\cos \\alpha=\\sqrt{1-\\frac{9}{25}}=\\frac{4}{5}$。答案是 \\boxed{\\frac{4}{5}}。",
    ),
    (
        "若复数 $z=(1+i)^{2}$，则 $z=$______，$|z|=$______",
        "$z=1+2i+i^{2}=2i$，$|z|=2$。答案是 \\boxed{2i;2}。",
    ),
]


def _format_options(choices: list[str]) -> str:
    return "\n".join(choices)


def _gsm8k_train_exemplars(data_dir: Path, k: int, seed: int = 2402) -> list[tuple[str, str]]:
    path = data_dir / "gsm8k" / "train.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"few-shot exemplars come from GSM8K train: {path} not found")
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    chosen = random.Random(seed).sample(range(len(rows)), k)
    exemplars = []
    for i in chosen:
        body, final = rows[i]["answer"].rsplit("####", 1)
        body = re.sub(r"<<[^>]*>>", "", body).strip()
        final = final.strip().replace(",", "")
        exemplars.append((rows[i]["question"], f"{body}\nThe answer is \\boxed{{{final}}}."))
    return exemplars


def few_shot_exemplars(example: Example, k: int, data_dir: Path) -> list[tuple[str, str]]:
    """``k`` (question, solution) exemplars suited to ``example`` (its language and kind)."""
    if k <= 0:
        return []
    if example.kind == "choice":
        pool = [(q + "\n" + _format_options(opts), sol) for q, opts, sol in _CHOICE_EXEMPLARS]
    elif example.kind == "cloze":
        pool = list(_CLOZE_EXEMPLARS)
    elif example.lang == "zh":
        pool = list(_ZH_EXEMPLARS)
    else:
        return _gsm8k_train_exemplars(data_dir, k)
    if k > len(pool):
        raise ValueError(
            f"--shots {k}: only {len(pool)} exemplars exist for {example.kind}/{example.lang}"
        )
    return pool[:k]


def _instruction(example: Example) -> str:
    if example.kind in ("choice", "cloze"):
        return INSTRUCTIONS[example.kind]
    return INSTRUCTIONS[example.lang]


def build_prompt(example: Example, shots: int = 0, data_dir: str | Path | None = None) -> str:
    """The chain-of-thought prompt for ``example``: ``shots`` worked exemplars, then the question.

    Layout (base-model friendly; the answer label invites the solution)::

        Question: ...\\n<instruction>\\nAnswer: <solution>\\n\\n ... Question: ...\\nAnswer:
    """
    from dsm_engine.eval.benchmarks import default_data_dir

    data = Path(data_dir) if data_dir is not None else default_data_dir()
    q_label, a_label = _LABELS["zh" if example.lang == "zh" else "en"]
    instruction = _instruction(example)
    blocks = [
        f"{q_label}: {q}\n{instruction}\n{a_label}: {solution}"
        for q, solution in few_shot_exemplars(example, shots, data)
    ]
    question = example.question
    if example.choices:
        question = question + "\n" + _format_options(example.choices)
    blocks.append(f"{q_label}: {question}\n{instruction}\n{a_label}:")
    return "\n\n".join(blocks)


def stop_strings(example: Example) -> list[str]:
    """Texts that end a completion: the start of a next exemplar block."""
    q_label = _LABELS["zh" if example.lang == "zh" else "en"][0]
    return [f"\n\n{q_label}:", f"\n{q_label}:"]
