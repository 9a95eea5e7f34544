"""Monte-Carlo step labels (Math-Shepherd): a step is good iff one of its K completions, rolled
out by a real (tiny, random) HF rollout engine from the prefix ending at that step, is graded
correct; the last step carries the response's own verdict."""

from __future__ import annotations

import pytest
import torch

from dsm_engine.reward_models.labeling import LabelPrompt, monte_carlo_step_labels, sample_and_grade
from dsm_engine.reward_models.step_split import find_step_ends
from dsm_engine.rollout.base import SamplingParams


def decode(ids):
    # every 4th id is a sentence end: responses of a random model have several steps
    return "".join("." if i % 4 == 0 else chr(97 + i % 26) for i in ids)


class Recording:
    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, n, params):
        out = self.engine.generate(prompts, n, params)
        self.calls.append((prompts, n, out))
        return out


@pytest.fixture(scope="module")
def engine():
    from dsm_engine.models.config import model_config
    from dsm_engine.models.convert import hf_config
    from dsm_engine.rollout.hf import HFRolloutEngine

    torch.manual_seed(0)
    return HFRolloutEngine(hf_config(model_config("tiny")), device="cpu")


def test_step_label_is_any_completion_correct(engine):
    grade = lambda outs, golds: [o.count("a") >= 1 for o in outs]  # noqa: E731
    prompts = [LabelPrompt([5, 6, 7], "p0", "g0"), LabelPrompt([9, 10], "p1", "g1")]
    params = SamplingParams(max_new_tokens=12, seed=3)
    rows = sample_and_grade(engine, prompts, 3, params, decode, grade)
    assert len(rows) == 6 and all(
        r["label"] == float(grade([r["response"]], [""])[0]) for r in rows
    )
    rec = Recording(engine)
    k = 4
    labelled = monte_carlo_step_labels(rec, rows, k, params, decode, grade, delimiter=".")
    assert len(rec.calls) == 1
    prefixes, n, out = rec.calls[0]
    assert n == k
    q = 0
    for row in labelled:
        ends = find_step_ends(row["response_ids"], decode, ".")
        assert row["step_ends"] == ends and len(row["step_labels"]) == len(ends)
        assert row["step_labels"][-1] == row["label"]
        for j, e in enumerate(ends[:-1]):
            assert prefixes[q] == row["prompt_ids"] + row["response_ids"][: e + 1]
            comps = out.token_ids[q * k : (q + 1) * k]
            want = any(grade([decode(row["response_ids"][: e + 1] + c)], [""])[0] for c in comps)
            assert row["step_labels"][j] == float(want)
            q += 1
    assert q == len(prefixes)
    assert sum(len(r["step_ends"]) for r in labelled) > len(labelled)  # multi-step rows exist


def test_labels_follow_the_grader_extremes(engine):
    params = SamplingParams(max_new_tokens=10, seed=1)
    prompts = [LabelPrompt([5, 6], "p", "g")]
    for verdict in (True, False):
        grade = lambda outs, golds, v=verdict: [v] * len(outs)  # noqa: E731
        rows = sample_and_grade(engine, prompts, 4, params, decode, grade)
        labelled = monte_carlo_step_labels(engine, rows, 2, params, decode, grade, ".")
        assert all(y == float(verdict) for r in labelled for y in r["step_labels"])
