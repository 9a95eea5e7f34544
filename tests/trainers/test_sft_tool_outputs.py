"""SFT on tool-integrated solutions: the interpreter's outputs are never learned."""

from __future__ import annotations

import json

import pytest

from dsm_engine.trainers.sft_data import (
    SFTDataConfig,
    eos_id,
    load_examples,
    load_tokenizer,
    make_rows,
)

QUESTION = "What is 12 * 34 + 1?\n"
SOLUTION = (
    "Let me multiply first.\n```python\nprint(12 * 34)\n```\n```output\n408\n```\n"
    "Now add one.\n```python\nprint(408 + 1)\n```\n```output\n409 (the interpreter says)\n```\n"
    "So the answer is \\boxed{409}."
)
OUTPUTS = ["\n408\n```\n", "\n409 (the interpreter says)\n```\n"]


@pytest.fixture(scope="module")
def tokenizer(neox_tokenizer_path):
    return load_tokenizer(neox_tokenizer_path)


def _load(tmp_path, rows, tokenizer, neox_tokenizer_path):
    path = tmp_path / "tir.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_examples(
        SFTDataConfig(path=str(path), tokenizer=str(neox_tokenizer_path)), tokenizer
    )


def _pieces(tokenizer, ex, learn):
    """Decoded runs of consecutive tokens with target == learn."""
    runs, current = [], []
    for token, target in zip(ex.ids, ex.target):
        if target == learn:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_interpreter_outputs_are_masked_and_everything_the_model_wrote_is_learned(
    tmp_path, tokenizer, neox_tokenizer_path
):
    rows = [
        {"prompt": QUESTION, "response": SOLUTION},
        {
            "messages": [
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": SOLUTION},
            ]
        },
    ]
    for ex in _load(tmp_path, rows, tokenizer, neox_tokenizer_path):
        masked = _pieces(tokenizer, ex, 0)
        assert masked[1:] == OUTPUTS  # after the prompt, exactly the two output bodies
        learned = _pieces(tokenizer, ex, 1)
        assert len(learned) == 3 and learned[0].endswith("```output")
        assert "print(12 * 34)" in learned[0] and learned[2].endswith("\\boxed{409}.")
        assert ex.ids[-1] == eos_id(tokenizer, None) and ex.target[-1] == 1
        # the shifted training rows keep the mask: no label inside an output is learned
        row = make_rows([ex], 512, pack=False)[0]
        learned_labels = row["labels"][row["loss_mask"] > 0].tolist()
        assert "408\n```" not in tokenizer.decode(learned_labels)


def test_responses_without_tool_outputs_tokenise_as_before(
    tmp_path, tokenizer, neox_tokenizer_path
):
    plain = "Twelve times thirty-four is 408, plus one is 409.\n#### 409"
    (ex,) = _load(
        tmp_path, [{"prompt": QUESTION, "response": plain}], tokenizer, neox_tokenizer_path
    )
    whole = tokenizer.encode(QUESTION, add_special_tokens=False).ids
    response = tokenizer.encode(plain, add_special_tokens=False).ids
    assert ex.ids == whole + response + [eos_id(tokenizer, None)]
    assert ex.target == [0] * len(whole) + [1] * (len(response) + 1)
