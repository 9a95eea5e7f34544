"""Step finding + process-advantage plumbing of process-supervised GRPO, end to end, against a
direct implementation of DeepSeekMath §4.1.3 written from the paper's formula."""

from __future__ import annotations

import pytest
import torch

from dsm_engine.grpo.batch import build_batch
from dsm_engine.reward_models.grpo_rewards import compute_advantages
from dsm_engine.reward_models.step_split import (
    find_step_ends,
    find_step_ends_by_id,
    split_steps,
    step_ends_from_text,
)


@pytest.fixture(scope="module")
def tok(neox_tokenizer_path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(neox_tokenizer_path))


def _decode(tok):
    return lambda ids: tok.decode(list(ids), skip_special_tokens=False)


class HashScorer:
    """A deterministic stand-in reward model: the score at a position depends on the token
    there and the row, so every step gets a distinct, reproducible score."""

    def __init__(self):
        self.calls = []

    def scores_at(self, rows, positions):
        self.calls.append((rows, positions))
        return [
            [((r[p] * 7919 + len(r) * 31 + p) % 997) / 997 for p in pos]
            for r, pos in zip(rows, positions)
        ]


def paper_process_advantages(step_rewards, step_token_index, group_size, n_tokens):
    """§4.1.3 literally: normalise all step rewards of a group, r~ = (r - mean(R)) / std(R);
    token t of output i gets  A_t = sum over steps j with index(j) >= t of r~_j."""
    out = []
    for g0 in range(0, len(step_rewards), group_size):
        group = [r for i in range(g0, g0 + group_size) for r in step_rewards[i]]
        n = len(group)
        mean = sum(group) / n if n else 0.0
        std = (sum((r - mean) ** 2 for r in group) / n) ** 0.5 if n else 0.0
        for i in range(g0, g0 + group_size):
            row = []
            for t in range(n_tokens):
                a = 0.0
                for r, idx in zip(step_rewards[i], step_token_index[i]):
                    if idx >= t and std > 0:
                        a += (r - mean) / (std + 1e-6)
                row.append(a)
            out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def test_step_ends_rules():
    text = "a = 1\nb = 2\n\nc"
    ends = step_ends_from_text(text, list(range(1, len(text) + 1)), "\n")
    assert ends == [5, 12, len(text) - 1]  # the blank line joins step 2; "c" ends on the last char
    assert split_steps("one\ntwo\n") == ["one\n", "two\n"]
    assert split_steps("single step") == ["single step"]
    assert split_steps("") == [] and split_steps("  \n ") == []
    assert find_step_ends_by_id([5, 9, 9, 5, 9], {9}) == [2, 4]
    assert find_step_ends_by_id([9, 9], {9}) == []


def test_step_ends_from_real_tokens(tok):
    text = "First, 3 + 4 = 7.\nThen 7 * 2 = 14.\nThe answer is \\boxed{14}."
    ids = tok.encode(text).ids
    ends = find_step_ends(ids, _decode(tok))
    assert len(ends) == 3 and ends[-1] == len(ids) - 1
    pieces = [tok.decode(ids[a + 1 : b + 1]) for a, b in zip([-1, *ends[:-1]], ends)]
    assert "".join(pieces) == text
    assert [p.endswith("\n") for p in pieces] == [True, True, False]
    # a configurable delimiter: sentences
    assert len(find_step_ends(ids, _decode(tok), delimiter=".")) == 3  # "7." "14." "}."


def test_process_supervised_advantages_match_paper_formula(tok):
    group_size = 3
    responses = [
        "3 + 4 = 7\n7 * 2 = 14\nThe answer is 14",  # several steps
        "The answer is 14",  # one step
        "",  # no steps (empty response)
        "x = 2\ny = 3\n",  # last step ends on the last token (trailing delimiter)
        "a\n\nb\nc",  # empty step merged
        "   \n",  # no steps (blank)
    ]
    prompts = ["Q: 3+4 then times 2?\n", "Q: other\n"]
    prompt_ids = [tok.encode(p).ids for p in prompts]
    resp_ids = [tok.encode(r).ids if r else [] for r in responses]
    rows_prompt = [prompt_ids[j // group_size] for j in range(len(responses))]
    batch = build_batch(
        rows_prompt,
        resp_ids,
        [[0.0] * len(r) for r in resp_ids],
        [0.0] * len(resp_ids),
        [True] * len(resp_ids),
        pad_id=0,
    )
    scorer = HashScorer()
    adv, metrics = compute_advantages(
        "prm", batch, group_size, scorer=scorer, decode=_decode(tok), impl="torch"
    )
    t = batch.tokens.shape[1]
    assert adv.shape == (len(responses), t)

    # The same quantity built directly: steps from the text, scores at row positions, the formula
    # over target positions (response token k of row j is target len(prompt_j) - 1 + k).
    step_rewards, step_index = [], []
    for p, r in zip(rows_prompt, resp_ids):
        ends = find_step_ends(r, _decode(tok)) if r else []
        row = p + r
        step_rewards.append(
            [((row[len(p) + e] * 7919 + len(row) * 31 + len(p) + e) % 997) / 997 for e in ends]
        )
        step_index.append([len(p) - 1 + e for e in ends])
    assert [len(s) for s in step_rewards] == [3, 1, 0, 2, 3, 0]
    assert step_index[3][-1] == len(rows_prompt[3]) - 1 + len(resp_ids[3]) - 1
    want = paper_process_advantages(step_rewards, step_index, group_size, t)
    mask = batch.mask
    torch.testing.assert_close(adv.double()[mask], want[mask], rtol=1e-5, atol=1e-5)
    assert torch.all(adv[2] == 0) and torch.all(adv[5][mask[5]] == 0)
    # the last response token of each row carries only its last step's normalised score
    assert metrics["steps_per_response"] == pytest.approx(9 / 6)


def test_outcome_kinds_use_grouped_advantages(tok):
    prompt = tok.encode("Q?\n").ids
    resp = [tok.encode(s).ids for s in ("1\n2", "3", "4\n5\n6", "7")]
    batch = build_batch(
        [prompt] * 4,
        resp,
        [[0.0] * len(r) for r in resp],
        [1.0, 0.0, 1.0, 1.0],
        [True] * 4,
        pad_id=0,
    )
    ver, _ = compute_advantages("verifier", batch, 2, impl="torch")
    torch.testing.assert_close(ver, torch.tensor([1.0, -1.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    scorer = HashScorer()
    orm, m = compute_advantages("orm", batch, 2, scorer=scorer, impl="torch")
    rows, pos = scorer.calls[-1]
    assert [p[0] for p in pos] == [len(r) - 1 for r in rows]  # scored at the last token
    s = torch.tensor([v[0] for v in scorer.scores_at(rows, pos)]).reshape(2, 2)
    want = (
        (s - s.mean(1, keepdim=True)) / (s.std(1, unbiased=False, keepdim=True) + 1e-6)
    ).flatten()
    torch.testing.assert_close(orm, want, atol=1e-5, rtol=1e-5)
    mixed, _ = compute_advantages(
        "mixed", batch, 2, scorer=scorer, decode=_decode(tok), impl="torch"
    )
    prm, _ = compute_advantages("prm", batch, 2, scorer=scorer, decode=_decode(tok), impl="torch")
    torch.testing.assert_close(mixed, ver[:, None] * batch.mask + prm)
