"""AUTOMATIC1111's prompt syntax, as text in and plain data out (no tensors here).

Three layers, applied in this order, each on the output of the one before:

1. `split_and`: composable diffusion. `a cat :1.2 AND a dog` is two sub-prompts, each with its own
   conditioning and a weight (default 1) that scales its pull in classifier-free guidance.
2. `prompt_schedule`: prompt editing and alternation. `[from:to:when]`, `[to:when]`, `[from::when]`
   (nestable) and `[a|b|c]` turn one prompt into a list of (last step, plain text) pairs, one per
   change. `when` with a decimal point is a fraction of the steps, otherwise a step number (A1111's
   "new" timelines, v1.6+; a `Timeline` says which steps: a hires pass's count on from the first pass's, and
   the old timelines are there too). A prompt that does not fit the grammar is used as it is, unscheduled.
3. `parse_attention`: emphasis. `(x)` x1.1, `((x))` x1.21, `[x]` /1.1, `(x:1.5)`, escapes `\\( \\) \\[ \\] \\\\`,
   and `BREAK`, giving (text, weight) segments for the tokenizer.

Emphasis brackets pass through layer 2 untouched (they are only text there), which is why
`[(a:1.2):b:5]` works: the schedule picks the text, then emphasis weighs it.

Everything here accepts any string: malformed input falls back to literal text the way A1111 does,
never an exception.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass

# The most characters a prompt text may have (prompt, negative_prompt, hr_prompt, hr_negative_prompt, also after
# styles are merged in): the same 64 KiB as an infotext (`infotext.MAX_CHARS`). A1111 has no limit; no real prompt
# comes near it (75 tokens are about 300 characters, and the text encoder's cost grows with every 75 more). The
# schedule holds a text per step (`prompt_schedule`), so this bounds what one prompt can make: with alternation
# and --max-steps 1000, 1000 texts of at most this many characters.
MAX_PROMPT_CHARS = 64 * 1024


def length_problem(name: str, text: str) -> str | None:
    """Why prompt text `text` (request field `name`) is refused for its length, or None.

    >>> length_problem("prompt", "x" * 70000)
    'prompt: 70000 characters; at most 65536'
    """
    if len(text) > MAX_PROMPT_CHARS:
        return f"{name}: {len(text)} characters; at most {MAX_PROMPT_CHARS}"
    return None

# --- 1. AND --------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r":\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Sub-prompts split on the uppercase word AND, each with its trailing `:weight` (default 1.0) taken
    off. Trailing whitespace goes too; a prompt without AND is one sub-prompt (and may still carry a
    weight: `a cat:2` is `a cat` at twice the guidance, as in A1111)."""
    parts = []
    for sub in _AND.split(prompt):
        m = _SUBPROMPT_WEIGHT.search(sub)
        if m:
            parts.append((sub[:m.start()].rstrip(), float(m.group(1))))
        else:
            parts.append((sub.rstrip(), 1.0))
    return parts


# --- 2. Prompt editing and alternation -----------------------------------------------------------

@dataclass(frozen=True)
class _Edit:
    """`[before:after:when]`; `before` is shown while the step is <= when."""
    before: tuple
    after: tuple
    when: str  # the number as written; its meaning depends on the step count


@dataclass(frozen=True)
class _Alternate:
    """`[a|b|c]`: step k shows option (k - 1) % n."""
    options: tuple


# A signed integer, decimal or exponent number (what Lark's SIGNED_NUMBER accepts), ASCII digits only,
# with optional whitespace around it and the closing bracket after.
_WHEN = re.compile(r"\s*([+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*\]")
_PLAIN = re.compile(r"[^\\\[\]():|]+")
_MAX_DEPTH = 100  # brackets nested deeper than this are not interpreted (they stay text)


class _NoMatch(Exception):
    pass


class _ScheduleParser:
    """Recursive descent over A1111's editing grammar. Inside a bracket construct everything must be
    well formed (every `(`/`[` closed by its own kind, `:` and `|` only where a construct allows them);
    at the top level a bracket or colon that starts no valid construct is kept as literal text. A `|`
    outside any alternation, or a backslash with nothing (or a newline) after it, makes the whole
    prompt not match."""

    def __init__(self, text: str):
        self.s = text
        self.memo: dict[int, tuple[list, int] | None] = {}

    def parse(self) -> list:
        s, pos, out = self.s, 0, []
        while pos < len(s):
            c = s[pos]
            if c in "([":
                found = self._construct(pos, 0)
                if found is not None:
                    nodes, pos = found
                    out.extend(nodes)
                    continue
                out.append(c)
                pos += 1
            elif c in ")]:":
                out.append(c)
                pos += 1
            else:
                text, pos = self._plain(pos)
                out.append(text)
        return out

    def _plain(self, pos: int) -> tuple[str, int]:
        """A run of ordinary characters and backslash escapes (kept as written, backslash included)."""
        s, start = self.s, pos
        while pos < len(s):
            m = _PLAIN.match(s, pos)
            if m:
                pos = m.end()
            elif s[pos] == "\\":
                if pos + 1 >= len(s) or s[pos + 1] == "\n":
                    raise _NoMatch
                pos += 2
            elif s[pos] == "|":
                if pos == start:
                    raise _NoMatch
                break
            else:
                break
        return s[start:pos], pos

    def _sequence(self, pos: int, depth: int) -> tuple[list, int]:
        """Elements up to (not including) the next `)`, `]`, `:`, `|` or the end."""
        s, out = self.s, []
        while pos < len(s) and s[pos] not in ")]:|":
            if s[pos] in "([":
                found = self._construct(pos, depth + 1)
                if found is None:
                    raise _NoMatch
                nodes, pos = found
                out.extend(nodes)
            else:
                text, pos = self._plain(pos)
                out.append(text)
        return out, pos

    def _construct(self, pos: int, depth: int) -> tuple[list, int] | None:
        if pos not in self.memo:
            try:
                self.memo[pos] = self._bracket(pos, depth)
            except _NoMatch:
                self.memo[pos] = None
        return self.memo[pos]

    def _bracket(self, pos: int, depth: int) -> tuple[list, int]:
        if depth > _MAX_DEPTH:
            raise _NoMatch
        s = self.s
        opening = s[pos]
        first, pos = self._sequence(pos + 1, depth)
        nxt = s[pos] if pos < len(s) else ""
        if opening == "(":  # emphasis: only text at this layer, "(" a ")" or "(" a ":" b ")"
            if nxt == ":":
                second, pos = self._sequence(pos + 1, depth)
                if s[pos:pos + 1] == ")":
                    return ["(", *first, ":", *second, ")"], pos + 1
            elif nxt == ")":
                return ["(", *first, ")"], pos + 1
            raise _NoMatch
        if nxt == "]":  # "[" a "]" is de-emphasis, text at this layer
            return ["[", *first, "]"], pos + 1
        if nxt == "|":
            options = [tuple(first)]
            while s[pos:pos + 1] == "|":
                item, pos = self._sequence(pos + 1, depth)
                options.append(tuple(item))
            if s[pos:pos + 1] != "]":
                raise _NoMatch
            return [_Alternate(tuple(options))], pos + 1
        if nxt == ":":
            m = _WHEN.match(s, pos + 1)
            if m:  # [to:when]
                return [_Edit((), tuple(first), m.group(1))], m.end()
            second, pos = self._sequence(pos + 1, depth)
            if s[pos:pos + 1] == ":":
                m = _WHEN.match(s, pos + 1)
                if m:  # [from:to:when]
                    return [_Edit(tuple(first), tuple(second), m.group(1))], m.end()
        raise _NoMatch


@dataclass(frozen=True)
class Timeline:
    """The steps prompt editing counts in (A1111's get_learned_conditioning_prompt_schedules). `steps`: the pass's
    steps as A1111 counts them (twice the sampling steps for second-order samplers: `SamplerSpec.total_steps`).
    `first`: for a hires pass, the first pass's: a step number then counts on from the first pass's steps and a
    fraction from 1 (after 20 first-pass steps, `[a:b:25]` and `[a:b:1.5]` switch at the 5th of 10 hires steps;
    `[a:b:0.5]` is `b` throughout). `old`: A1111's use_old_scheduling ("Old prompt editing timelines"): a number
    under 1 is a fraction, any other a step number, both of the first pass's steps."""
    steps: int
    first: int | None = None
    old: bool = False

    @classmethod
    def hires(cls, first: int, steps: int, old: bool = False) -> Timeline:
        """The hires pass's, after a first pass of `first` steps (A1111 counts the old timelines in those)."""
        return cls(first, None, True) if old else cls(steps, first)


def _when_step(when: str, timeline: Timeline) -> int:
    """The last step that shows `before` (A1111's formula, see `Timeline`); capped at the timeline's steps."""
    v, steps = float(when), timeline.steps
    if timeline.old:
        v = v * steps if v < 1 else v
    elif "." in when:
        v = (v - (0.0 if timeline.first is None else 1.0)) * steps
    else:
        v -= timeline.first or 0
    return int(max(-1.0, min(float(steps), v)))  # the clamp only matters for inf (A1111 would crash)


def _visit(nodes, timeline: Timeline, found: set[int], cycles: set[int]) -> None:
    """Collect the switch steps of edits into `found` and the option counts of alternations into `cycles`."""
    for node in nodes:
        if isinstance(node, _Edit):
            w = _when_step(node.when, timeline)
            if w >= 1:
                found.add(w)
            _visit(node.before, timeline, found, cycles)
            _visit(node.after, timeline, found, cycles)
        elif isinstance(node, _Alternate):
            cycles.add(len(node.options))
            for option in node.options:
                _visit(option, timeline, found, cycles)


def _text_at(nodes, step: int, timeline: Timeline) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Edit):
            chosen = node.before if step <= _when_step(node.when, timeline) else node.after
            parts.append(_text_at(chosen, step, timeline))
        else:
            parts.append(_text_at(node.options[(step - 1) % len(node.options)], step, timeline))
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int | Timeline) -> list[tuple[int, str]]:
    """[(end_at_step, text), ...], ascending, the last ending at the timeline's steps (`steps`: an int is a
    first pass's). Text i is in use while the sampling step counter is <= its end_at_step (see `ScheduledCond`
    for the counter's convention).

    >>> prompt_schedule("a [b:c:2] d", 10)
    [(2, 'a b d'), (10, 'a c d')]
    """
    timeline = steps if isinstance(steps, Timeline) else Timeline(int(steps))
    steps = max(int(timeline.steps), 1)
    timeline = Timeline(steps, timeline.first, timeline.old)
    try:
        tree = _ScheduleParser(prompt).parse()
    except _NoMatch:
        return [(steps, prompt)]
    edits, cycles = set(), set()
    _visit(tree, timeline, edits, cycles)
    ends = {steps} | edits
    if cycles:  # an alternation anywhere: a text per step
        ends.update(range(1, steps + 1))
    # With alternation there is an entry per step, but often few different texts (`[a|b]`: two). The text at a
    # step follows from which edits it is past and its place in each alternation's cycle: steps that agree on
    # both share one string, made once (a prompt of MAX_PROMPT_CHARS at 1000 steps is not copied 1000 times).
    switches, lengths = sorted(edits), sorted(cycles)
    made: dict[tuple, str] = {}
    texts: dict[str, str] = {}  # and equal texts made for other steps are one string too
    schedule = []
    for end in sorted(ends):
        key = (bisect_left(switches, end), *((end - 1) % n for n in lengths))
        text = made.get(key)
        if text is None:
            text = _text_at(tree, end, timeline)
            text = made[key] = texts.setdefault(text, text)
        schedule.append((end, text))
    return schedule


# --- 3. Emphasis and BREAK -----------------------------------------------------------------------

BREAK = None  # the marker `parse_attention` puts between segments where a new 75-token chunk starts
_BREAK = re.compile(r"\bBREAK\b")
_ROUND, _SQUARE = 1.1, 1 / 1.1
# Emphasis brackets open at once. A1111 has no limit, but every bracket multiplies the weight of all it
# encloses (1.1^100 is 13781) and costs a pass over it; deeper ones are read as text here, and a prompt
# that has them is refused by `prompt_problem` before it is queued.
MAX_NESTING = 100
_FLOAT32_MAX = 3.4028234663852886e38  # the text encoder's numbers: a larger weight is infinity there
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_ATTENTION_TEXT = re.compile(r"[^\\()\[\]:]+")


def parse_attention(text: str) -> list[tuple[str, float] | None]:
    """Segments of (text, weight) in prompt order, with `BREAK` (the marker None) where the prompt has
    the uppercase word BREAK. Weights multiply through nesting; an unclosed `(` or `[` weighs the rest
    of the prompt; an unmatched `)` or `]` is literal; adjacent segments of equal weight are merged.
    Brackets opened while MAX_NESTING are open are literal text, and so are the ones that close them.

    >>> parse_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    return _attention(text)[0]


def _attention(text: str, stop_too_deep: bool = False) -> tuple[list[tuple[str, float] | None], bool]:
    """`parse_attention`'s segments, and whether a bracket was opened past MAX_NESTING (read as text);
    `stop_too_deep` returns ([], True) at the first such bracket."""
    res: list[list] = []  # [text, weight] or [None, None] for BREAK
    # where each open bracket's text starts in `res`; None for one opened past MAX_NESTING (literal text)
    round_open: list[int | None] = []
    square_open: list[int | None] = []
    depth, too_deep = 0, False  # brackets open (the literal ones not counted)

    def multiply(start: int, factor: float) -> None:
        for seg in res[start:]:
            if seg[0] is not None:
                seg[1] *= factor

    def add_text(t: str) -> None:
        parts = _BREAK.split(t) if "BREAK" in t else [t]
        for i, part in enumerate(parts):
            if i:
                res.append([None, None])
            # the whitespace around each BREAK goes with it (str.isspace is the regex's \s)
            res.append([part.lstrip() if i else part, 1.0])
            if i < len(parts) - 1:
                res[-1][0] = res[-1][0].rstrip()

    pos, n = 0, len(text)
    while pos < n:
        c = text[pos]
        if c == "\\":
            # \( \) \[ \] \\ are the character itself; a backslash before anything else is dropped
            if pos + 1 < n and text[pos + 1] in "()[]\\":
                res.append([text[pos + 1], 1.0])
                pos += 2
            else:
                res.append(["", 1.0])
                pos += 1
        elif c in "([":
            if depth < MAX_NESTING:
                (round_open if c == "(" else square_open).append(len(res))
                depth += 1
            else:
                if stop_too_deep:
                    return [], True
                (round_open if c == "(" else square_open).append(None)
                too_deep = True
                add_text(c)
            pos += 1
        elif c == ":":
            m = _WEIGHT_CLOSE.match(text, pos)
            weight = _to_float(m.group(1)) if m else None
            if weight is not None and round_open and round_open[-1] is not None:
                multiply(round_open.pop(), weight)
                depth -= 1
                pos = m.end()
            elif weight is not None:
                if round_open:  # closes a literal `(`
                    round_open.pop()
                add_text(m.group(0))  # `:1.2)` with no `(` open is literal text
                pos = m.end()
            else:
                add_text(":")
                pos += 1
        elif (c == ")" and round_open) or (c == "]" and square_open):
            start = (round_open if c == ")" else square_open).pop()
            if start is None:
                add_text(c)
            else:
                multiply(start, _ROUND if c == ")" else _SQUARE)
                depth -= 1
            pos += 1
        elif c in ")]":
            add_text(c)
            pos += 1
        else:
            m = _ATTENTION_TEXT.match(text, pos)
            add_text(m.group(0))
            pos = m.end()

    for start in round_open:
        if start is not None:
            multiply(start, _ROUND)
    for start in square_open:
        if start is not None:
            multiply(start, _SQUARE)

    if not res:
        res = [["", 1.0]]
    merged: list[list] = [res[0]]
    for seg in res[1:]:
        last = merged[-1]
        if seg[0] is not None and last[0] is not None and seg[1] == last[1]:
            last[0] += seg[0]
        else:
            merged.append(seg)
    return [None if seg[0] is None else (seg[0], seg[1]) for seg in merged], too_deep


def _to_float(number: str) -> float | None:
    """`[.\\d]+` admits things like `1.2.3` or `.`; A1111 fails the whole generation on them, we read
    them as not-a-weight (the colon and number stay text)."""
    try:
        return float(number)
    except ValueError:
        return None


def prompt_problem(prompt: str, steps: int | Timeline, emphasis: str = "Original", split: bool = True) -> str | None:
    """Why a prompt cannot be encoded (None when it can): an AND weight (`split`: the positive prompt) or an
    emphasis weight that is infinite in the text encoder's float32 numbers, or emphasis brackets nested more
    than MAX_NESTING deep (emphasis "None" reads brackets as text). A1111 runs such prompts into NaNs."""
    subs = split_and(prompt) if split else [(prompt, 1.0)]
    for _sub, weight in subs:
        if not abs(weight) <= _FLOAT32_MAX:
            return f"an AND sub-prompt's weight {weight:.3g} is too large (at most {_FLOAT32_MAX:.3g})"
    if emphasis == "None":
        return None
    texts = {text for sub, _ in subs for _, text in prompt_schedule(sub, steps)}
    for text in texts:
        segments, too_deep = _attention(text, stop_too_deep=True)
        if too_deep:
            return (f"emphasis brackets ( ) [ ] are nested more than {MAX_NESTING} deep (count the unclosed ones "
                    f"too; each multiplies the weight by 1.1); escape literal brackets as \\( \\)")
        for segment in segments:
            if segment is not None and not abs(segment[1]) <= _FLOAT32_MAX:
                return (f"the emphasis weight of {segment[0][:40]!r} is {segment[1]:.3g}, too large for the text "
                        f"encoder (at most {_FLOAT32_MAX:.3g})")
    return None


_BRACKET_PAIRS = (("(", ")", "round"), ("[", "]", "square"), ("{", "}", "curly"))


def bracket_problems(prompt: str) -> list[str]:
    """Brackets that do not pair up (A1111's prompt bracket checker, which the token counter shows): for each kind,
    round, square and curly, the counts of opening and closing ones when they differ. A backslash-escaped bracket
    is text and is not counted."""
    counts: dict[str, int] = {}
    escaped = False
    for char in prompt:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            counts[char] = counts.get(char, 0) + 1
    return [f"{name} brackets {opening} {closing}: {counts.get(opening, 0)} opening, {counts.get(closing, 0)} closing"
            for opening, closing, name in _BRACKET_PAIRS if counts.get(opening, 0) != counts.get(closing, 0)]


def emphasis_syntax_in(prompt: str, negative_prompt: str, steps: int | Timeline) -> bool:
    """Whether a text the encoder will see (after AND splitting and scheduling) contains `(` or `[`: when
    A1111 writes a non-default emphasis mode into the infotext."""
    texts = {text for sub, _ in split_and(prompt) for _, text in prompt_schedule(sub, steps)}
    texts.update(text for _, text in prompt_schedule(negative_prompt, steps))
    return any("(" in t or "[" in t for t in texts)
