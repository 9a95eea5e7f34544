"""Answer equivalence: our grader against math-verify alone, on labelled pairs built from the
shipped MATH and GSM8K test sets (issue 22, section 3).

    python -P benchmarks/peers/bench_grader.py [--math 5000] [--gsm8k 1319] [--repeats 3]

Each pair is (reference, model output, label). Right pairs (recall): every reference against
its own solution, and against an equal rewriting of its answer (``\\dfrac``, ``\\left(``,
thousands separators, a decimal for a fraction, a unit, ``x =``). Wrong pairs (precision):
another problem's answer when the two are certainly different, and perturbations: off by
one, wrong sign, dropped factor, swapped interval end, swapped pair, a shifted decimal point,
and the answer embedded in a wrong expression (``x + 18``, ``18 \\text{ or more}``, ``17, 18``).
The adversarial set of the tests (tests/adversarial/grader_cases.yaml) is scored too.

Ours: ``grade_batch`` (one math-verify worker, fresh per set and repeat). math-verify alone:
``math_verify.parse`` on the output and on the reference (``$...$``; GSM8K: the number after
``####``), then ``math_verify.verify``, with its defaults, in this process. Time per pair is
the median over repeats of wall time / pairs. Writes ``peers_grader.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from fractions import Fraction
from importlib import metadata
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "benchmarks"
ADVERSARIAL = REPO / "tests" / "adversarial" / "grader_cases.yaml"
NAME = "peers_grader"


@dataclass
class Pair:
    """One labelled pair; ``reference`` is what our grader gets, ``mv_reference`` math-verify."""

    source: str  # math | gsm8k | adversarial
    group: str  # own, rewritten, other, off-by-one, sign, ...
    kind: str  # verifier kind
    reference: str
    mv_reference: str
    output: str
    label: bool


# --------------------------------------------------------------------------- answer rewrites

_PLAIN_RE = re.compile(r"-?\d+(?:\.\d+)?")
_SIMPLE_FRAC_RE = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")


def _bare(answer: str) -> str:
    """The answer without one leading ``x =``."""
    return re.sub(r"^\s*[a-z]\s*=\s*", "", answer).strip()


def _plain_value(answer: str) -> Fraction | None:
    """Value of an answer written as a bare integer or decimal, after one ``x =`` (labels
    rely on nothing else)."""
    return Fraction(_bare(answer)) if _PLAIN_RE.fullmatch(_bare(answer)) else None


def _certainly_not_a_number(answer: str) -> bool:
    """An answer holding a variable, a word, a list, a set or an interval is no real number."""
    bare = re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", "", _bare(answer))  # units
    bare = re.sub(r"\\(?:frac|dfrac|sqrt|pi|left|right|cdot|times|circ)(?![A-Za-z])", "", bare)
    return bool(re.search(r"[A-Za-z,]|\\infty|\\cup|\\\{", bare))


def _with_separators(n: int) -> str:
    return f"{n:,}"


def rewrite(answer: str, rng: random.Random) -> str | None:
    """An equal rendering of a MATH answer, or None when no safe rewrite applies."""
    options = []
    value = _plain_value(answer)
    if value is not None and value.denominator == 1 and abs(value) >= 1000:
        options.append(_with_separators(int(value)))
    if value is not None and _bare(answer) == answer.strip():
        options += [f"{answer} \\text{{ units}}", f"x = {answer}"]
    frac = _SIMPLE_FRAC_RE.fullmatch(answer.strip())
    if frac and int(frac.group(3)) != 0:
        sign, a, b = frac.groups()
        options.append(f"{sign}{a}/{b}")
        exact = Fraction(int(a), int(b))
        if (exact * 10**4).denominator == 1:
            options.append(sign + str(float(exact)))
    if "\\frac" in answer:
        options.append(answer.replace("\\frac", "\\dfrac"))
    if "\\left" not in answer and "\\sqrt[" not in answer and re.search(r"[()\[\]]", answer):
        swapped = answer.replace("(", "\\left(").replace(")", "\\right)")
        options.append(swapped.replace("[", "\\left[").replace("]", "\\right]"))
    if "," in answer and not re.search(r", |,\\!|\{,\}|\d,\d{3}(?!\d)", answer):
        options.append(answer.replace(",", ", "))  # a list, not 61,328 (sixty-one thousand ...)
    options = [o for o in options if o != answer]
    return rng.choice(options) if options else None


_FINITE_END_RE = re.compile(
    r"(?P<open>[(\[])\s*(?!-?\s*\\infty)[-\w\\]|[\w}]\s*(?P<close>[)\]])(?<!\\infty\))(?<!\\infty\])"
)


def perturb(answer: str) -> dict[str, str]:
    """Wrong variants of a MATH answer by perturbation group (only those that surely change
    the value; answers with text or units are left alone)."""
    out: dict[str, str] = {}
    if re.search(r"\\(?:text|mbox|mathrm|textbf)", answer):
        return out
    digits = list(re.finditer(r"\d+", answer))
    if digits:
        last = digits[-1]
        out["off-by-one"] = f"{answer[: last.start()]}{int(last.group()) + 1}{answer[last.end() :]}"
    single_term = not re.search(r"[,+=]|(?<!^)-|\\cup|\\pm|^[(\[]|^\\\{|^\\left", answer.strip())
    nonzero = bool(re.search(r"[1-9]", answer))  # "-0" and a zero matrix equal themselves
    if single_term and nonzero:
        flipped = answer.strip()[1:] if answer.strip().startswith("-") else "-" + answer.strip()
        out["sign"] = flipped
    coefficient = re.fullmatch(r"(-?)(\d+)\s*(\\[a-zA-Z]+.*|[a-z].*|\(.*)", answer.strip())
    if coefficient and int(coefficient.group(2)) not in (0, 1):
        out["dropped-factor"] = coefficient.group(1) + coefficient.group(3)
    frac = re.fullmatch(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}", answer.strip())
    if frac and frac.group(3).strip() != "1" and frac.group(2).strip() != "0":
        out.setdefault("dropped-factor", frac.group(1) + frac.group(2))
    s = answer.strip()
    if ("\\infty" in s or "\\cup" in s or s[:1] == "[" or s[-1:] == "]") and s[:1] in "([":
        # swap one finite end: [-oo, 5) is (-oo, 5) to math-verify and to the reals
        end = _FINITE_END_RE.search(s)
        if end is not None:
            swap = {"(": "[", "[": "(", ")": "]", "]": ")"}
            i = end.start("open") if end.group("open") else end.start("close")
            out["interval-end"] = s[:i] + swap[s[i]] + s[i + 1 :]
    pair = re.fullmatch(r"\(([^(),]+),([^(),]+)\)", s)
    if pair and pair.group(1).strip() != pair.group(2).strip() and "\\infty" not in s:
        out["pair-order"] = f"({pair.group(2).strip()}, {pair.group(1).strip()})"
    return out


def embeddings(value: str, rng: random.Random, count: int) -> dict[str, str]:
    """Wrong answers that contain the right number (what a last-number grader credits)."""
    n = Fraction(value)
    nxt = str(n + 1) if n.denominator == 1 else value + "1"
    templates = {
        "embedded-variable": f"x + {value}",
        "embedded-hedge": f"{value} \\text{{ or more}}",
        "embedded-list": f"{nxt}, {value}",
        "embedded-equation": f"{nxt} = {value}",
    }
    if n.denominator == 1 and n >= 2:  # "9 9" for 18: math-verify reads two numbers as a sum
        templates["embedded-sum"] = f"{n // 2} {n - n // 2}"
    if abs(n) != 1 and n != 0:
        templates["embedded-fraction"] = f"\\frac{{1}}{{{value}}}"
    chosen = rng.sample(sorted(templates), min(count, len(templates)))
    return {group: templates[group] for group in chosen}


# --------------------------------------------------------------------------- the labelled set


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _boxed_output(answer: str) -> str:
    return f"Reasoning omitted. The answer is $\\boxed{{{answer}}}$."


def math_pairs(limit: int, rng: random.Random) -> list[Pair]:
    """Pairs from the MATH test set (``limit`` problems, seeded sample)."""
    from dsm_engine.rewards.extract import find_last_boxed

    rows = _rows(DATA / "math" / "test.jsonl")
    rows = rng.sample(rows, min(limit, len(rows)))
    answers = [find_last_boxed(r["solution"]).strip() for r in rows]
    pairs = []

    def add(group: str, answer: str, output: str, label: bool) -> None:
        pairs.append(Pair("math", group, "math", answer, f"${answer}$", output, label))

    for i, (row, answer) in enumerate(zip(rows, answers)):
        add("own", answer, row["solution"], True)
        rewritten = rewrite(answer, rng)
        if rewritten is not None:
            add("rewritten", answer, _boxed_output(rewritten), True)
        for group, wrong in perturb(answer).items():
            add(group, answer, _boxed_output(wrong), False)
        other = answers[(i + 1 + rng.randrange(len(answers) - 1)) % len(answers)]
        a, b = _plain_value(answer), _plain_value(other)
        certain = (a is not None and b is not None and a != b) or (
            (a is None) != (b is None)
            and _certainly_not_a_number(other if a is not None else answer)
        )
        if certain:
            add("other", answer, _boxed_output(other), False)
        if a is not None:
            for group, wrong in embeddings(_bare(answer), rng, 1).items():
                add(group, answer, _boxed_output(wrong), False)
    return pairs


def gsm8k_pairs(limit: int, rng: random.Random) -> list[Pair]:
    """Pairs from the GSM8K test set (``limit`` problems, seeded sample)."""
    rows = _rows(DATA / "gsm8k" / "test.jsonl")
    rows = rng.sample(rows, min(limit, len(rows)))
    values = [int(r["answer"].rsplit("####", 1)[1].strip().replace(",", "")) for r in rows]
    pairs = []
    for i, (row, v) in enumerate(zip(rows, values)):
        reference = row["answer"]

        def add(group: str, output: str, label: bool, reference: str = reference, v: int = v):
            pairs.append(Pair("gsm8k", group, "gsm8k", reference, str(v), output, label))

        add("own", reference, True)
        equal = [f"\\${v}", f"{v} \\text{{ dollars}}", f"{v}.00", f"\\frac{{{2 * v}}}{{2}}"]
        if abs(v) >= 1000:
            equal.append(_with_separators(v))
        add("rewritten", _boxed_output(rng.choice(equal)), True)
        add("rewritten", f"So the answer is {v}.", True)
        add("off-by-one", _boxed_output(str(v + rng.choice((-1, 1)))), False)
        if v != 0:
            add("sign", _boxed_output(str(-v)), False)
            shifted = str(v // 10) if v % 10 == 0 else str(v / 10)
            add("shifted-point", _boxed_output(shifted), False)
        other = values[(i + 1 + rng.randrange(len(values) - 1)) % len(values)]
        if other != v:
            add("other", _boxed_output(str(other)), False)
        for group, wrong in embeddings(str(v), rng, 2).items():
            add(group, _boxed_output(wrong), False)
    return pairs


def adversarial_pairs(limit: int | None) -> list[Pair]:
    """The numeric and MATH cases of the tests' adversarial set (choice/cloze left out:
    math-verify does not grade them)."""
    import yaml

    pairs = []
    for case in yaml.safe_load(ADVERSARIAL.read_text(encoding="utf-8")):
        if case["kind"] in ("choice", "cloze"):
            continue
        ref = case["ref"]
        mv_ref = ref.rsplit("####", 1)[1].strip() if "####" in ref else f"${ref}$"
        if "\\boxed" in ref:
            mv_ref = ref
        pairs.append(
            Pair("adversarial", case["cat"], case["kind"], ref, mv_ref, case["out"], case["ok"])
        )
    if limit is None or limit >= len(pairs):
        return pairs
    return pairs[:: len(pairs) // limit][:limit]  # spread over every category


# --------------------------------------------------------------------------- the graders


def grade_ours(pairs: list[Pair]) -> tuple[list[bool], float]:
    """Our grader on every pair: verdicts and wall seconds (a fresh, warm checker)."""
    from dsm_engine.rewards import grade_batch
    from dsm_engine.rewards.equivalence import EquivalenceConfig, SymbolicChecker

    checker = SymbolicChecker(EquivalenceConfig())
    checker.start()
    try:
        start = time.perf_counter()
        grades = grade_batch(
            [p.output for p in pairs],
            [p.reference for p in pairs],
            [p.kind for p in pairs],
            checker=checker,
        )
        return [g.correct for g in grades], time.perf_counter() - start
    finally:
        checker.close()


def grade_math_verify(pairs: list[Pair]) -> tuple[list[bool], float]:
    """math-verify alone, defaults, in this process: verdicts and wall seconds."""
    from math_verify import parse, verify

    logging.disable(logging.CRITICAL)  # it logs every timeout
    verify(parse("$1$"), parse("$1$"))  # load the grammar before the clock starts
    verdicts = []
    start = time.perf_counter()
    for p in pairs:
        try:
            verdicts.append(bool(verify(parse(p.mv_reference), parse(p.output))))
        except Exception:  # noqa: BLE001 - a crash is a "not equal", as in our grader
            verdicts.append(False)
    return verdicts, time.perf_counter() - start


GRADERS = {"ours": grade_ours, "math-verify": grade_math_verify}


def scores(pairs: list[Pair], verdicts: list[bool]) -> dict:
    tp = sum(p.label and v for p, v in zip(pairs, verdicts))
    fp = sum(not p.label and v for p, v in zip(pairs, verdicts))
    fn = sum(p.label and not v for p, v in zip(pairs, verdicts))
    return {
        "pairs": len(pairs),
        "right_pairs": tp + fn,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "false_credit": fp,
        "missed": fn,
    }


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = platform.processor()
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    status = [
        *git,
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!benchmarks/results",
    ]
    dirty = subprocess.run(status, capture_output=True, text=True)
    versions = {}
    for dist in ("dsm-engine", "math-verify", "latex2sympy2_extended", "sympy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "commit": commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
        "versions": versions,
    }


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Answer equivalence: our grader vs math-verify alone",
        "",
        f"{env['date']} · {env['device']} · load {env['load_average_1m']} · Python {env['python']}"
        f" · commit {env['commit']} · " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
        "| set | grader | pairs | right pairs | precision | recall | false credit | missed | ms/pair |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['set']} | {row['grader']} | {row['pairs']} | {row['right_pairs']} | "
            f"{100 * row['precision']:.2f}% | {100 * row['recall']:.2f}% | {row['false_credit']} | "
            f"{row['missed']} | {row['ms_per_pair']:.3f} |"
        )
    lines += ["", "False credit by kind of wrong answer (pairs graded right that are wrong):", ""]
    lines += ["| group | wrong pairs | ours | math-verify |", "|---|---:|---:|---:|"]
    for group, row in sorted(result["false_credit_by_group"].items()):
        lines.append(f"| {group} | {row['wrong_pairs']} | {row['ours']} | {row['math-verify']} |")
    lines += [""] + [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def _measure(sets: dict[str, list[Pair]], repeats: int) -> tuple[dict, dict]:
    """Verdicts (first repeat) and wall seconds per repeat, per grader and set."""
    verdicts: dict[tuple[str, str], list[bool]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    for repeat in range(repeats):
        for name, grade in GRADERS.items():
            for set_name, pairs in sets.items():
                got, took = grade(pairs)
                seconds.setdefault((name, set_name), []).append(took)
                first = verdicts.setdefault((name, set_name), got)
                flips = sum(a != b for a, b in zip(first, got))
                print(
                    f"repeat {repeat + 1}/{repeats}: {name} on {set_name}: {took:.1f} s"
                    f" for {len(pairs)} pairs, {flips} verdicts differ from repeat 1"
                )
    return verdicts, seconds


def run(args: argparse.Namespace) -> dict:
    environment = machine()  # the commit that is measured, before anything can change it
    rng = random.Random(args.seed)
    sets = {"MATH": math_pairs(args.math, rng), "GSM8K": gsm8k_pairs(args.gsm8k, rng)}
    if args.adversarial != 0:
        sets["adversarial"] = adversarial_pairs(None if args.adversarial < 0 else args.adversarial)
    verdicts, seconds = _measure(sets, args.repeats)
    rows = []
    everything = [p for pairs in sets.values() for p in pairs]
    for name in GRADERS:
        for set_name, pairs in sets.items():
            ms = statistics.median(seconds[name, set_name]) / len(pairs) * 1000
            row = {"set": set_name, "grader": name, **scores(pairs, verdicts[name, set_name])}
            rows.append({**row, "ms_per_pair": ms})
        total = sum(statistics.median(seconds[name, s]) for s in sets)
        joined = [v for s in sets for v in verdicts[name, s]]
        row = {"set": "all", "grader": name, **scores(everything, joined)}
        rows.append({**row, "ms_per_pair": total / len(everything) * 1000})
    rows.sort(key=lambda r: [*sets, "all"].index(r["set"]))
    by_group: dict[str, dict] = {}
    wrong_ours, missed_peer, credited_peer = [], [], []
    for set_name, pairs in sets.items():
        for i, p in enumerate(pairs):
            got = {name: verdicts[name, set_name][i] for name in GRADERS}
            if got["ours"] != p.label:
                wrong_ours.append({**asdict(p), **got})
            elif got["math-verify"] != p.label:
                (missed_peer if p.label else credited_peer).append({**asdict(p), **got})
            if not p.label:
                empty = {"wrong_pairs": 0, **dict.fromkeys(GRADERS, 0)}
                row = by_group.setdefault(f"{p.source}/{p.group}", empty)
                row["wrong_pairs"] += 1
                for name in GRADERS:
                    row[name] += got[name]
    notes = [
        f"{len(everything)} labelled pairs (seed {args.seed}): MATH {args.math} and GSM8K "
        f"{args.gsm8k} problems sampled from the shipped test sets"
        + (
            ", and the numeric/MATH cases of tests/adversarial/grader_cases.yaml"
            * ("adversarial" in sets)
        )
        + ".",
        f"ms/pair: median over {args.repeats} repeats of wall time / pairs, on a shared machine "
        "(ours: one math-verify worker process, fresh per set and repeat; math-verify: in-process).",
        "Right pairs: each reference against its own full solution and against an equal "
        "rewriting. Wrong pairs: other problems' answers (only when certainly different) and "
        "perturbations of the reference; the embedded-* groups write the right number inside a "
        "wrong answer (x + 18, 18 or more, 17, 18, 17 = 18, 9 9, 1/18).",
    ]
    return {
        "benchmark": NAME,
        "environment": environment,
        "arguments": {**vars(args), "out": str(args.out)},
        "rows": rows,
        "false_credit_by_group": by_group,
        "ours_wrong": wrong_ours,
        "only_math_verify_missed": missed_peer,
        "only_math_verify_false_credit_sample": credited_peer[:200],
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--math", type=int, default=5000, help="MATH problems (of 5000)")
    parser.add_argument("--gsm8k", type=int, default=1319, help="GSM8K problems (of 1319)")
    parser.add_argument(
        "--adversarial", type=int, default=-1, help="adversarial cases (-1: all, 0: none)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (args.out / f"{NAME}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
