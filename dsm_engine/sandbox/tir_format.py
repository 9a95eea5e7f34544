"""The text format of tool-integrated solutions (the paper's, after ToRA).

A solution interleaves prose with Python blocks; after each block the interpreter's output
follows in an ``output`` block::

    Let me compute the product.
    ```python
    print(12 * 34)
    ```
    ```output
    408
    ```
    So the answer is \\boxed{408}.

The model writes everything up to and including the ``` ```output`` fence (its request to run
the block); the interpreter writes the rest of the output block. :func:`split_tool_outputs`
cuts a solution into those two kinds of spans, the unit that SFT masks from its loss and
that the tool loop appends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CODE_FENCE",
    "OUTPUT_FENCE",
    "Span",
    "format_output",
    "program_for",
    "python_blocks",
    "split_tool_outputs",
]

CODE_FENCE = "```python"
OUTPUT_FENCE = "```output"  # the stop string: the model asks for the block above to be run

_BLOCK_RE = re.compile(r"```python[ \t]*\n(.*?)```", re.DOTALL)
# an output block's body and closing fence, after the model-written OUTPUT_FENCE
_OUTPUT_BODY_RE = re.compile(r"\n.*?```[ \t]*\n?|\n.*\Z", re.DOTALL)


@dataclass(frozen=True)
class Span:
    """A piece of a solution: written by the ``model`` or by the ``tool`` (interpreter)."""

    text: str
    source: str  # "model" | "tool"


def python_blocks(text: str) -> list[str]:
    """Bodies of the complete ``` ```python`` blocks in ``text``, in order."""
    return [m.group(1) for m in _BLOCK_RE.finditer(text)]


def split_tool_outputs(text: str) -> list[Span]:
    """Cut a tool-integrated solution into model and tool spans; joined they give ``text``.

    The tool span of each output block runs from just after ``` ```output`` to the end of its
    closing fence line (an unclosed block runs to the end of the text). A solution without
    output blocks is one model span.
    """
    spans: list[Span] = []
    last = at = 0
    while (fence := text.find(OUTPUT_FENCE, at)) >= 0:
        body = fence + len(OUTPUT_FENCE)
        match = _OUTPUT_BODY_RE.match(text, body)
        if match is None:  # the fence is not followed by a newline: prose, not an output block
            at = body
            continue
        spans += [Span(text[last:body], "model"), Span(match.group(0), "tool")]
        last = at = match.end()
    if last < len(text) or not spans:
        spans.append(Span(text[last:], "model"))
    return [s for s in spans if s.text]


def format_output(text: str, max_chars: int = 512) -> str:
    """The tool span appended after a model's ``` ```output`` fence: the output, its middle
    elided past ``max_chars`` (head and tail are what a reader needs), and the closing fence."""
    text = text.strip("\n")
    if len(text) > max_chars:
        half = max_chars // 2
        text = text[:half] + "\n...\n" + text[-half:]
    return f"\n{text}\n```\n"


def program_for(blocks: list[str], replay: bool = True) -> str:
    """The program that runs the last of ``blocks`` the way a notebook would.

    replay: run the earlier blocks first, output hidden and errors ignored, so that names
        they defined exist (models reuse variables across blocks); else the last block alone.
    """
    if not blocks:
        raise ValueError("program_for needs at least one code block")
    if not replay or len(blocks) == 1:
        return blocks[-1]
    earlier = ",\n    ".join(repr(b) for b in blocks[:-1])
    return (
        "import contextlib as _ctx, io as _io\n"
        f"for _cell in [\n    {earlier},\n]:\n"
        "    with _ctx.redirect_stdout(_io.StringIO()), _ctx.suppress(Exception):\n"
        "        exec(_cell, globals())\n"
        "del _ctx, _io, _cell\n"
        f"{blocks[-1]}"
    )
