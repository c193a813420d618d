"""The standard VQA answer normalisation (the VQA challenge's rules, as TextVQA's scorer applies them).

In order: newlines and tabs become spaces; punctuation is removed where it touches a space (or anywhere when the
text holds a digit-comma-digit group, so "1,000" becomes "1000") and becomes a space otherwise; a full stop not
between digits is dropped; then word by word, lower case: number words become digits, articles go, and
apostrophe-less contractions get their apostrophe back ("dont" -> "don't").
"""

from __future__ import annotations

import re

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Contractions written without the apostrophe, mapped to their usual form (only words whose form is unambiguous).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "shant": "shan't", "shed": "she'd",
    "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "somebodys": "somebody's",
    "someones": "someone's", "somethings": "something's", "thats": "that's", "thered": "there'd",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"  # apostrophes stay (contractions); the full stop is handled below
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def _strip_punctuation(text: str) -> str:
    has_digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCTUATION:
        if has_digit_comma or f"{p} " in text or f" {p}" in text:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    return _LONE_PERIOD.sub("", text)


def _normalize_words(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(text: str) -> str:
    """An answer in the form VQA accuracy compares (see the module docstring)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _normalize_words(_strip_punctuation(text))
