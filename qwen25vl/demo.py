"""`make demo`: the embedded tiny model on scenes it never saw.

Renders grounding scenes with the engine from seeds outside its train and held-out ranges, asks the model to locate
one kind of object (prints the parsed JSON, writes the image with the boxes drawn) and to count them, asks it to read
a rendered word and when an object in a rendered video disappears, then says which abilities are reliable at the
model's measured held-out scores (`scores.json` beside the model, written by `qwen25vl.recipes.tiny_eval` and
`qwen25vl.recipes.tiny_skills`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEMO_SEED_BASE = 1 << 42  # above the train (from 0) and held-out (from 2**40) seed ranges of every engine seed
ABILITIES = {"grounding": "locating objects (boxes, acc@IoU 0.5)", "point": "pointing at an object",
             "count": "counting", "presence": "telling present from absent ([] exactly when the object is absent)"}
# the other engines' abilities, scored by `recipes.tiny_skills` (scores.json's "skills"); stage 5 trains OCR and video
SKILLS = {"ocr": "reading a word (OCR, exact match)", "video": "video timestamps (mean absolute error, seconds)",
          "charts": "chart values", "documents": "document layout (block F1 at IoU 0.5)",
          "agent": "screen agents (click inside the target)"}


def render_scene(index: int):
    """(image, its objects) of demo scene `index`."""
    from qwen25vl.recipes.bootstrap import scene_of
    from qwen25vl.recipes.tiny import DATA_OPTIONS

    image, things = scene_of(DEMO_SEED_BASE + index, DATA_OPTIONS)
    return image, things


def ask(vlm, image, prompt: str, max_new_tokens: int = 160) -> str:
    """A grounding question, asked as the model's last training stage and the official cookbook do: text first."""
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image", "image": image}]}]
    return vlm.chat(messages, max_new_tokens=max_new_tokens, temperature=0.0)


def inside_image(result, size: tuple[int, int]) -> bool:
    w, h = size
    return all(0 <= b[0] <= b[2] < w and 0 <= b[1] <= b[3] < h for b in result.boxes)


def clamp_to_image(result, size: tuple[int, int]):
    """(items with boxes and points clamped into the frame, how many were moved); a tiny model overshoots."""
    from dataclasses import replace

    w, h = size
    items, moved = [], 0
    for g in result.items:
        g = replace(g, bbox=g.bbox and tuple(round(v) for v in g.bbox), point=g.point and tuple(round(v) for v in g.point))
        box = g.bbox and (min(max(g.bbox[0], 0), w - 1), min(max(g.bbox[1], 0), h - 1),
                          min(max(g.bbox[2], 0), w - 1), min(max(g.bbox[3], 0), h - 1))
        point = g.point and (min(max(g.point[0], 0), w - 1), min(max(g.point[1], 0), h - 1))
        moved += (box != g.bbox) or (point != g.point)
        items.append(replace(g, bbox=box, point=point))
    return items, moved


def load_model(model=None):
    import qwen25vl
    from qwen25vl.generation.paths import model_path

    return qwen25vl.load(model_path(model), device="cpu", threads=1)


def run_demo(model=None, out: str | Path = "build/demo", scenes: int = 2, vlm=None) -> list[dict]:
    """Locate and count on `scenes` unseen scenes (with `vlm`, or the model folder `model` loaded); returns one dict
    per scene (answers, parsed JSON, files)."""
    from qwen25vl.tasks.draw import draw_groundings
    from qwen25vl.tasks.grounding import grounding_prompt, parse_grounding

    vlm = vlm or load_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(scenes):
        image, things = render_scene(i)
        query = sorted({t.label for t in things})[0]
        truth = [list(t.box) for t in sorted(things, key=lambda t: (t.box[1], t.box[0])) if t.label == query]
        answer = ask(vlm, image, grounding_prompt(query, "detect"))
        parsed = parse_grounding(answer)
        inside, (items, moved) = inside_image(parsed, image.size), clamp_to_image(parsed, image.size)
        counted = parse_grounding(ask(vlm, image, grounding_prompt(query, "count")))
        count = counted.stated_count if counted.stated_count is not None else counted.count
        scene_path, drawn_path = out / f"scene-{i}.png", out / f"scene-{i}-boxes.png"
        image.save(scene_path)
        draw_groundings(image, items).save(drawn_path)
        results.append({"query": query, "answer": answer, "json": [g.to_dict() for g in items],
                        "inside_image": inside, "clamped": moved, "size": list(image.size),
                        "count": count, "truth": truth, "scene": str(scene_path), "drawn": str(drawn_path)})
    return results


def skill_sample(kind: str, index: int, out: Path) -> dict:
    """An unseen sample of the OCR or video engine (the options stage 5 trained on), written under `out`:
    {"messages": the question's conversation with absolute media paths, "truth": the reference answer, "media"}."""
    import random

    from qwen25vl.data.synth import engine as engine_of
    from qwen25vl.data.synth.common import Media, check_options
    from qwen25vl.recipes.tiny_data import SKILL_OPTIONS

    engine = engine_of(kind)
    media = Media(out, "demo", index)
    (example,) = engine.make_sample(random.Random(DEMO_SEED_BASE + index), media,
                                    check_options(kind, engine.DEFAULTS, SKILL_OPTIONS[kind]))
    from qwen25vl.recipes.tiny_eval import resolve_media

    *question, answer = example.messages
    question = resolve_media(question, out)
    return {"messages": question, "truth": answer["content"], "media": str((out / media.written[0]).resolve()),
            "question": next(p["text"] for p in question[-1]["content"] if p.get("type") == "text")}


def run_skills(vlm, out: Path, index: int = 0) -> list[dict]:
    """An OCR and a video timestamp question on unseen samples: {kind, question, answer, truth, media} each."""
    results = []
    for kind, tokens in (("ocr", 16), ("video", 48)):
        sample = skill_sample(kind, index, out)
        answer = vlm.chat(sample.pop("messages"), max_new_tokens=tokens, temperature=0.0)
        results.append({"kind": kind, "answer": answer, **sample})
    return results


def reliability(folder: Path) -> list[str]:
    """Plain sentences on each ability at the measured held-out scores."""
    path = folder / "scores.json"
    if not path.is_file():
        return ["no measured scores ship with this model: treat every answer as unreliable"]
    from qwen25vl.recipes.tiny_card import verdict

    measured = json.loads(path.read_text())
    scores, skills = measured["scores"], measured.get("skills", {})
    lines = []
    for name, what in ABILITIES.items():
        s = scores.get(name)
        if s is None:
            continue
        lines.append(f"{what}: {verdict(s).upper()} - held-out {s['score']:.0%} +/- {s['se']:.0%} vs trivial baseline "
                     f"{s['baseline']:.0%} (n={s['n']})")
    from qwen25vl.recipes.tiny_data import SKILL_OPTIONS

    for name, what in SKILLS.items():
        s = skills.get(name)
        what = what if name in SKILL_OPTIONS else f"{what}, never trained on"
        if s is None:
            lines.append(f"{what}: NOT MEASURED - treat its answers as unreliable")
        elif s.get("lower_is_better"):
            lines.append(f"{what}: {verdict(s).upper()} - held-out {s['score']:.2f} s +/- {s['se']:.2f} vs trivial "
                         f"baseline {s['baseline']:.2f} s (n={s['n']})")
        else:
            lines.append(f"{what}: {verdict(s).upper()} - held-out {s['score']:.0%} +/- {s['se']:.0%} vs trivial "
                         f"baseline {s['baseline']:.0%} (n={s['n']})")
    return lines


def main(argv=None) -> int:
    from qwen25vl.generation.paths import model_path

    p = argparse.ArgumentParser(prog="python -m qwen25vl.demo", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder (default: the embedded tiny model)")
    p.add_argument("--out", default="build/demo")
    p.add_argument("--scenes", type=int, default=2)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    folder = model_path(args.model)
    print(f"model: {folder}")
    vlm = load_model(folder)
    for i, r in enumerate(run_demo(folder, args.out, args.scenes, vlm=vlm)):
        print(f"\nscene {i} ({r['size'][0]}x{r['size'][1]}, never seen in training): locate every {r['query']}")
        print(r["answer"])
        print(f"truth (from the engine): {r['truth']}")
        print(f"as JSON in the frame ({r['clamped']} clamped to the image): {json.dumps(r['json'])}")
        print(f"drawn: {r['drawn']}")
        print(f"how many {r['query']}? the model says {r['count']} (truth {len(r['truth'])})")
    for r in run_skills(vlm, Path(args.out)):
        what = "a rendered word (an image never seen in training)" if r["kind"] == "ocr" else \
            "a video never seen in training"
        print(f"\n{what} ({r['media']}): {r['question']}")
        print(f"the model says {r['answer']!r} (truth {r['truth']!r})")
    print("\nwhat the measured scores say:")
    for line in reliability(folder):
        print(f"  {line}")
    print(f"\noutputs in {Path(args.out).resolve()} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
