"""Where reasoning steps end: step-end token positions of a response.

A response is split into steps at a delimiter (default: a newline). The delimiter belongs to
the step it closes, so a step ends at the token holding the delimiter's last character. Empty
steps (runs of delimiters, whitespace) are merged into the step before them, and the last step
always ends on the response's last token (it absorbs trailing text and a stop token), so every
response token belongs to exactly one step. A response with no non-blank text has no steps.

Positions are indices into the *response* tokens (``0 .. len(response)-1``), the convention of
``process_advantages``; :func:`to_sequence_positions` shifts them into a packed prompt+response
row for the reward-model losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DEFAULT_DELIMITER = "\n"

Decode = Callable[[Sequence[int]], str]


def token_char_ends(token_ids: Sequence[int], decode: Decode) -> tuple[str, list[int]]:
    """The decoded text of ``token_ids`` and, per token, the end (exclusive) char offset.

    Decodes token by token (linear time) and falls back to decoding every prefix when the
    per-token pieces do not add up to the whole (byte-level tokens splitting a character).
    """
    ids = list(token_ids)
    text = decode(ids)
    ends, pos = [], 0
    for t in ids:
        pos += len(decode([t]))
        ends.append(pos)
    if pos == len(text) and "".join(decode([t]) for t in ids) == text:
        return text, ends
    ends = [len(decode(ids[: k + 1])) for k in range(len(ids))]
    return text, ends


def step_ends_from_text(text: str, char_ends: Sequence[int], delimiter: str) -> list[int]:
    """Step-end token indices of a response given its text and per-token char ends."""
    if not delimiter:
        raise ValueError("delimiter must be a non-empty string")
    n = len(char_ends)
    if n == 0 or not text.strip():
        return []
    out: list[int] = []
    seg_start = 0  # char offset where the current (unclosed) step's text begins
    tok = 0
    start = 0
    while True:
        hit = text.find(delimiter, start)
        if hit < 0:
            break
        last_char = hit + len(delimiter) - 1
        start = hit + len(delimiter)
        while tok < n and char_ends[tok] <= last_char:
            tok += 1
        if tok >= n:
            break
        if not text[seg_start:hit].strip():
            if out:  # an empty step: its delimiter joins the step before it
                out[-1] = tok
                seg_start = start
            continue
        if not out or out[-1] != tok:
            out.append(tok)
        seg_start = start
    if out and not text[seg_start:].strip():
        out[-1] = n - 1  # trailing blank text/stop token: part of the last step
    elif not out or out[-1] != n - 1:
        out.append(n - 1)
    return out


def find_step_ends(
    token_ids: Sequence[int], decode: Decode, delimiter: str = DEFAULT_DELIMITER
) -> list[int]:
    """Step-end indices (into ``token_ids``, increasing, last one = ``len - 1``) of a response.

    ``decode`` maps token ids to text (e.g. ``tokenizer.decode``). Returns ``[]`` for an empty
    or blank response.
    """
    text, ends = token_char_ends(token_ids, decode)
    return step_ends_from_text(text, ends, delimiter)


def find_step_ends_by_id(token_ids: Sequence[int], delimiter_ids: set[int]) -> list[int]:
    """Fast path when the delimiter is a set of whole tokens: steps end at those tokens.

    Same conventions as :func:`find_step_ends` (no empty steps; the last step ends on the last
    token), except that blankness is judged by token: a step is empty when it holds only
    delimiter tokens.
    """
    n = len(token_ids)
    out: list[int] = []
    open_step = False
    for i, t in enumerate(token_ids):
        if int(t) in delimiter_ids:
            if open_step:
                out.append(i)
                open_step = False
            elif out:  # an empty step: its delimiter joins the step before it
                out[-1] = i
        else:
            open_step = True
    if n and (open_step or out):
        if out and not open_step:
            out[-1] = n - 1
        else:
            out.append(n - 1)
    return out


def split_steps(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """The response text cut into its steps (same rules as :func:`find_step_ends`);
    concatenating the result gives ``text`` back."""
    ends = step_ends_from_text(text, list(range(1, len(text) + 1)), delimiter)
    out, prev = [], 0
    for e in ends:
        out.append(text[prev : e + 1])
        prev = e + 1
    return out


def to_sequence_positions(step_ends: Sequence[int], prompt_len: int) -> list[int]:
    """Response-relative step ends shifted to positions in a ``prompt + response`` row."""
    return [prompt_len + e for e in step_ends]
