"""Model-based stats operators: a checkpoint prompted as a judge, batched across records through the engine.

    - {op: interleaved_scores, model: CKPT}   # text_quality, image_text_relevance, information_complementarity,
                                              # information_density_balance: 1-5 each (the report's four criteria)
    - {op: classify_domain, model: CKPT, taxonomy: FILE}   # domain, subcategory (8 domains, 30 subcategories)
    - {op: query_scores, model: CKPT}         # query_complexity, query_relevance
    - {op: answer_scores, model: CKPT}        # answer_correctness, answer_completeness, answer_clarity

Answers are parsed tolerantly (a JSON object, or `name: 4` lines, in any case and with spaces for underscores);
an answer that gives no usable value for every field sets `<prefix>_malformed` (interleaved, query, answer,
domain; its fields None) and is counted by the run, never raised; `<prefix>_raw` keeps the answer's start.
Filters then act on the scores (`{op: threshold, stat: text_quality, min: 3}`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from qwen25vl.data.pipeline.engine import ModelOp, ask
from qwen25vl.data.pipeline.ops import StatsOp, answer_texts, media_parts, question_text, register, resolve_media
from qwen25vl.errors import ConfigError

TAXONOMY_FILE = Path(__file__).with_name("taxonomy.yaml")
INTERLEAVED = ("text_quality", "image_text_relevance", "information_complementarity", "information_density_balance")
QUERY = ("query_complexity", "query_relevance")
ANSWER = ("answer_correctness", "answer_completeness", "answer_clarity")
_CRITERIA_TEXT = {
    "text_quality": "is the text fluent, correct and informative",
    "image_text_relevance": "does the text talk about what the images show",
    "information_complementarity": "do the images and the text each add information the other lacks",
    "information_density_balance": "is the information spread evenly between images and text",
    "query_complexity": "how much reasoning the question needs",
    "query_relevance": "how much the question is about the images",
    "answer_correctness": "is the answer right",
    "answer_completeness": "does the answer cover everything asked",
    "answer_clarity": "is the answer clear and well organised",
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def _score(value) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip().split("/")[0])
    except ValueError:
        return None
    return int(number) if number == int(number) and 1 <= number <= 5 else None


def parse_scores(text: str | None, fields: tuple[str, ...]) -> dict | None:
    """{field: 1..5} when the answer gives a valid score for every field (JSON first, then `field: n` text)."""
    if not text:
        return None
    from qwen25vl.tasks._json import extract_json_values

    for value in extract_json_values(text).values:
        if isinstance(value, dict):
            got = {_norm(k): _score(v) for k, v in value.items()}
            if all(got.get(f) is not None for f in fields):
                return {f: got[f] for f in fields}
    found = {}
    for f in fields:
        pattern = re.escape(f).replace("_", r"[\s_\-]+")
        match = re.search(rf"{pattern}\W{{0,4}}(\d+(?:\.\d+)?)", text, re.IGNORECASE)
        found[f] = _score(match.group(1)) if match else None
    return found if all(v is not None for v in found.values()) else None


class _Judge(ModelOp, StatsOp):
    prefix = "judge"
    fields: tuple[str, ...] = ()

    @property
    def note(self) -> str:
        return f"{self.prefix}_malformed"

    def __init__(self, text_only: bool = False, max_pixels: int = 200704, **model):
        settings = self._init_model(**model)
        StatsOp.__init__(self, text_only=text_only, max_pixels=max_pixels, **settings)
        self.text_only, self.max_pixels = text_only, int(max_pixels)

    def instruction(self, row: dict) -> str:
        raise NotImplementedError

    def parse(self, text: str | None) -> dict | None:
        return parse_scores(text, self.fields)

    def conversation(self, row: dict) -> list[dict]:
        parts = [] if self.text_only else [
            {"type": "image", "image": resolve_media(p["image"], row.get("root", ".")), "max_pixels": self.max_pixels}
            for p in media_parts(row) if p["type"] == "image" and isinstance(p.get("image"), str)]
        return [{"role": "user", "content": parts + [{"type": "text", "text": self.instruction(row)}]}]

    def compute(self, rows):
        texts = ask(self.answerer, [self.conversation(r) for r in rows],
                    {"max_new_tokens": self.max_new_tokens, "temperature": 0.0})
        out = []
        for text in texts:
            parsed = self.parse(text)
            stats = parsed or dict.fromkeys(self.fields)
            out.append({**stats, self.note: parsed is None, f"{self.prefix}_raw": (text or "")[:160]})
        return out


def _score_prompt(fields, material: str) -> str:
    lines = "\n".join(f"- {f}: {_CRITERIA_TEXT[f]}" for f in fields)
    example = ", ".join(f'"{f}": 3' for f in fields)
    return (f"{material}\n\nRate the sample above on each criterion from 1 (worst) to 5 (best):\n{lines}\n"
            f"Answer with one JSON object only, for example {{{example}}}.")


def _sample_text(row: dict) -> str:
    answers = "\n".join(answer_texts(row))
    return f"Question:\n{question_text(row)}\n\nAnswer:\n{answers}"


@register("interleaved_scores")
class InterleavedScores(_Judge):
    prefix, fields = "interleaved", INTERLEAVED

    def instruction(self, row):
        return _score_prompt(self.fields, f"Interleaved image-text sample:\n{question_text(row)}\n"
                                          + "\n".join(answer_texts(row)))


@register("query_scores")
class QueryScores(_Judge):
    prefix, fields = "query", QUERY

    def instruction(self, row):
        return _score_prompt(self.fields, f"Question:\n{question_text(row)}")


@register("answer_scores")
class AnswerScores(_Judge):
    prefix, fields = "answer", ANSWER

    def instruction(self, row):
        return _score_prompt(self.fields, _sample_text(row))


@lru_cache(maxsize=8)
def load_taxonomy(path: str | Path = TAXONOMY_FILE) -> dict[str, tuple[str, ...]]:
    """{domain: subcategories} from a YAML file; a subcategory must belong to one domain only."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"taxonomy file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) and v for v in data.values()):
        raise ConfigError(f"{path}: a taxonomy maps each domain to a non-empty list of subcategories")
    seen: dict[str, str] = {}
    for domain, subs in data.items():
        for sub in subs:
            if sub in seen:
                raise ConfigError(f"{path}: subcategory {sub!r} is in both {seen[sub]!r} and {domain!r}")
            seen[sub] = domain
    return {str(k): tuple(map(str, v)) for k, v in data.items()}


def parse_domain(text: str | None, taxonomy: dict[str, tuple[str, ...]]) -> tuple[str, str] | None:
    """(domain, subcategory) named by the answer: a JSON `subcategory`, else the first subcategory name in it."""
    if not text:
        return None
    owner = {sub: d for d, subs in taxonomy.items() for sub in subs}
    from qwen25vl.tasks._json import extract_json_values

    for value in extract_json_values(text).values:
        if isinstance(value, dict) and _norm(str(value.get("subcategory", ""))) in owner:
            sub = _norm(str(value["subcategory"]))
            return owner[sub], sub
    lowered = _norm(text)
    hits = [(lowered.find(sub), sub) for sub in owner if re.search(rf"(?<![a-z]){sub}(?![a-z])", lowered)]
    if not hits:
        return None
    sub = min(hits)[1]
    return owner[sub], sub


@register("classify_domain")
class ClassifyDomain(_Judge):
    """`domain`, `subcategory` from the taxonomy file (default: the packaged 8 domains x 30 subcategories)."""

    prefix, fields = "domain", ("domain", "subcategory")

    def __init__(self, taxonomy: str | None = None, **kw):
        super().__init__(**kw)
        self.settings["taxonomy"] = taxonomy
        self.taxonomy = load_taxonomy(taxonomy or TAXONOMY_FILE)

    def instruction(self, row):
        options = "\n".join(f"- {d}: {', '.join(subs)}" for d, subs in self.taxonomy.items())
        return (f"{_sample_text(row)}\n\nClassify the sample above into one subcategory of this taxonomy "
                f"(domain: subcategories):\n{options}\n"
                'Answer with one JSON object only, for example {"domain": "coding", "subcategory": "code_generate"}.')

    def parse(self, text):
        found = parse_domain(text, self.taxonomy)
        return None if found is None else {"domain": found[0], "subcategory": found[1]}
