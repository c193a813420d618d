"""Multiple choice: formatting the options into the prompt and finding the chosen option in a free-form answer.

Models asked to "answer with the option's letter" still write prose ("The answer is (B) because ..."), bold
("**C**"), a letter with the option's text ("B. A red car"), or the text alone. `extract_choice` tries, in order
of how unambiguous they are: the whole answer is a letter; an explicit statement ("answer is C", "Answer: C",
"option C"), the last one winning since reasoning comes before the conclusion; a letter opening the answer ("C.",
"(C)", "C:"); a single letter in brackets; the text of exactly one option; a single bare capital letter that is
not the article "A". None when nothing is unambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MARKUP = re.compile(r"[*_`#]+")
_LETTER = r"[\(\[]?([A-Z])[\)\]]?"
_STATED = re.compile(rf"(?i:answer|option|choice)(?i:\s+(?:is|would\s+be|should\s+be|will\s+be))?\s*(?:[:：]\s*)?"
                     rf"(?i:option\s+|choice\s+)?{_LETTER}(?![A-Za-z])")
_OPENING = re.compile(rf"^\s*{_LETTER}\s*(?:[.):：,]|$|\s+-|\s)")
_BRACKETED = re.compile(r"[\(\[]([A-Z])[\)\]]")
_BARE = re.compile(r"(?<![A-Za-z'’])([A-Z])(?![A-Za-z'’])")


def option_letters(count: int) -> str:
    return LETTERS[:count]


def format_options(options: Sequence[str], style: str = "{letter}. {text}") -> str:
    """Options one per line, lettered in order ("A. first\\nB. second")."""
    return "\n".join(style.format(letter=LETTERS[i], text=str(o).strip()) for i, o in enumerate(options))


def _valid(letter: str | None, letters: str) -> str | None:
    return letter if letter and letter in letters else None


def _by_text(answer: str, options: Sequence[str], letters: str) -> str | None:
    text = " ".join(answer.lower().split())
    hits = [letters[i] for i, o in enumerate(options)
            if o and re.search(rf"(?<!\w){re.escape(' '.join(str(o).lower().split()))}(?!\w)", text)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:  # "red car" and "car" both appear: the longest option text is the specific one
        longest = max(hits, key=lambda h: len(str(options[letters.index(h)])))
        if sum(len(str(options[letters.index(h)])) == len(str(options[letters.index(longest)])) for h in hits) == 1:
            return longest
    return None


def _bare(answer: str, letters: str) -> str | None:
    found = set()
    for m in _BARE.finditer(answer):
        letter = m.group(1)
        after = answer[m.end():m.end() + 2]
        if letter == "A" and re.match(r"\s[a-z]", after):  # the article: "A red car"
            continue
        if letter == "I" and re.match(r"\s[a-z]", after):  # the pronoun: "I think"
            continue
        if letter in letters:
            found.add(letter)
    return found.pop() if len(found) == 1 else None


def extract_choice(answer: str, options: Sequence[str] | None = None, *, count: int | None = None) -> str | None:
    """The option letter `answer` chooses among `options` (or among `count` lettered options), or None."""
    letters = option_letters(count if count is not None else len(options or ()) or 4)
    clean = _MARKUP.sub("", answer or "").strip()
    if not clean:
        return None
    whole = re.fullmatch(r"[\(\[]?([A-Za-z])[\)\]]?[.:]?", clean)
    if whole:
        return _valid(whole.group(1).upper(), letters)
    stated = [m.group(1) for m in _STATED.finditer(clean) if m.group(1) in letters]
    if stated:
        return stated[-1]
    opening = _OPENING.match(clean)
    if opening and opening.group(1) in letters and not (opening.group(1) in "AI" and re.match(r"[AI]\s+[a-z]", clean)):
        return opening.group(1)
    bracketed = {m.group(1) for m in _BRACKETED.finditer(clean) if m.group(1) in letters}
    if len(bracketed) == 1:
        return bracketed.pop()
    if options:
        by_text = _by_text(clean, options, letters)
        if by_text:
            return by_text
    return _bare(clean, letters)
