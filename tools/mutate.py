"""Mutation testing of the core pure modules with mutmut 3 (`make mutate`); writes the kill rates to TESTING.md.

Each module is mutated in a scratch copy of the tree (build/mutate/<module>/, so other work in the tree is never
touched and never seen), with only the test files that guard it selected. mutmut maps every test to the functions it
calls and runs, for each mutant, only the selected tests that reach the mutated function. Results are written
between the MUTATION-RESULTS markers of TESTING.md: per module, the mutants found, killed, survived, judged
equivalent (EQUIVALENT below, with the reason), and the kill rate of the non-equivalent ones.

    .venv/bin/python tools/mutate.py                      # every module (tens of minutes on 2 shared cores)
    .venv/bin/python tools/mutate.py positions sampling   # some modules; the other rows of the table are kept
    .venv/bin/python tools/mutate.py --list               # the modules and their test selections
    .venv/bin/python tools/mutate.py --report-only        # rewrite TESTING.md from the last run (after EQUIVALENT edits)

Mutant names (`qwen25vl.positions.x_vision_block_ids__mutmut_7`) number the mutations of one function in order, so
an edit to a function renumbers its mutants: re-check the EQUIVALENT entries of a function after changing it (a
stale entry is reported as 'equivalent entry not found').
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "build" / "mutate"
TESTING_MD = ROOT / "TESTING.md"
BEGIN, END = "<!-- MUTATION-RESULTS:BEGIN -->", "<!-- MUTATION-RESULTS:END -->"
MUTMUT = Path(sys.executable).parent / "mutmut"


@dataclass(frozen=True)
class Module:
    name: str
    path: str  # the file mutated
    tests: tuple[str, ...]  # glob patterns of the test files selected for it
    functions: tuple[str, ...] = ()  # only these functions / methods ("Class.method"); empty = all

    def patterns(self) -> list[str]:
        """mutmut name patterns of the mutants to run."""
        dotted = self.path[:-3].replace("/", ".")
        if not self.functions:
            return [f"{dotted}.*"]
        out = []
        for f in self.functions:
            cls, _, meth = f.rpartition(".")
            out.append(f"{dotted}.x\u01c1{cls}\u01c1{meth}__mutmut_*" if cls else f"{dotted}.x_{f}__mutmut_*")
        return out


MODULES = [
    Module("positions", "qwen25vl/positions.py", ("tests/test_positions.py", "tests/test_mutants_positions*.py")),
    Module("vision_layout", "qwen25vl/vision_layout.py",
           ("tests/test_vision_layout.py", "tests/test_mutants_vision_layout*.py")),
    Module("attention", "qwen25vl/model/attention.py", ("tests/test_attention.py", "tests/test_mutants_attention*.py")),
    Module("sampling", "qwen25vl/generation/sampling.py", ("tests/test_sampling.py", "tests/test_mutants_sampling*.py")),
    Module("chat_template", "qwen25vl/processing/chat_template.py",
           ("tests/test_chat_template.py", "tests/test_mutants_chat_template*.py")),
    Module("image_resize", "qwen25vl/processing/image.py", ("tests/test_image.py", "tests/test_mutants_image*.py"),
           functions=("smart_resize", "resolve_pixel_limits", "_share_budget", "ResizeInfo.scale",
                      "ResizeInfo.to_original", "ResizeInfo.to_resized")),
    Module("coords", "qwen25vl/tasks/coords.py",
           ("tests/test_tasks_grounding.py", "tests/test_tasks_coords*.py", "tests/test_mutants_coords*.py")),
    Module("grounding", "qwen25vl/tasks/grounding.py",
           ("tests/test_tasks_grounding.py", "tests/test_mutants_grounding*.py")),
    # landed later (issue 21: "as they land, packing, losses and the evaluation metrics")
    Module("packing", "qwen25vl/data/packing.py", ("tests/test_data_packing.py", "tests/test_mutants_packing*.py")),
    Module("losses", "qwen25vl/train/losses.py", ("tests/test_train_losses.py", "tests/test_mutants_losses*.py")),
    Module("eval_metrics", "qwen25vl/eval/metrics.py",
           ("tests/test_eval_metrics.py", "tests/test_mutants_eval_metrics*.py")),
]
BY_NAME = {m.name: m for m in MODULES}

# Mutants no test can kill because the mutated program behaves the same: name -> one-line reason. Only for modules
# whose survivors were judged one by one; a survivor not listed here counts against the kill rate.
_CPU = "device placement only: every tensor is already on the CPU (the tests' only device)"
_DIM = "dim +1 and -1 are the same axis of a 2-D tensor"
_CUDA = "the CUDA varlen-kernel branch: unreachable on CPU (guarded by the GPU test, which skips here)"
EQUIVALENT: dict[str, str] = {
    # positions.py
    "qwen25vl.positions.x__row_ids__mutmut_13": "at == start appends an empty arange: same ids",
    "qwen25vl.positions.x__row_ids__mutmut_110": "start == len appends an empty arange: same ids",
    "qwen25vl.positions.x__row_ids__mutmut_135": "an empty row's (0,) zeros broadcast into its empty (3, 0) slot",
    "qwen25vl.positions.x__row_ids__mutmut_139": "an empty row's (3, 1) zeros broadcast into its empty (3, 0) slot",
    "qwen25vl.positions.x_decode_position_ids__mutmut_5": _CPU,
    "qwen25vl.positions.x_decode_position_ids__mutmut_7": _CPU,
    "qwen25vl.positions.x_mrope_position_ids__mutmut_16": _CPU,
    "qwen25vl.positions.x_mrope_position_ids__mutmut_111": _CPU,
    "qwen25vl.positions.x_rope_deltas_of__mutmut_5": "torch.full with an int fill value is int64 anyway",
    "qwen25vl.positions.x_rope_deltas_of__mutmut_6": _CPU,
    "qwen25vl.positions.x_rope_deltas_of__mutmut_9": "torch.full with an int fill value is int64 anyway",
    "qwen25vl.positions.x_rope_deltas_of__mutmut_10": _CPU,
    "qwen25vl.positions.x_rope_deltas_of__mutmut_11": "a scalar count (every row has T tokens) broadcasts to the same (B,)",
    "qwen25vl.positions.x_rope_deltas_of__mutmut_21": _DIM,
    "qwen25vl.positions.x_rope_deltas_of__mutmut_31": "the fill only shows in rows with no valid token, which take the 0 branch",
    "qwen25vl.positions.x_rope_deltas_of__mutmut_40": "a row with no valid token gives -1 + 1 - 0 = 0 on both branches",
    "qwen25vl.positions.x_text_position_ids__mutmut_10": _DIM,
    "qwen25vl.positions.x_vision_block_ids__mutmut_9": "a Python float becomes float32 by default",
    "qwen25vl.positions.x_vision_block_ids__mutmut_11": "a Python float becomes float32 by default",
    "qwen25vl.positions.x_vision_block_ids__mutmut_15": "int64 arange x float32 scalar tensor is computed in float32 too",
    "qwen25vl.positions.x_vision_block_ids__mutmut_17": "int64 arange x float32 scalar tensor is computed in float32 too",
    "qwen25vl.positions.x_vision_block_ids__mutmut_41": _CPU,
    # generation/sampling.py
    **{f"qwen25vl.generation.sampling.x__filter_sorted__mutmut_{n}": _CPU for n in (6, 8)},
    **{f"qwen25vl.generation.sampling.x__filter_sorted__mutmut_{n}": _DIM for n in (33, 38, 63)},
    "qwen25vl.generation.sampling.x__filter_sorted__mutmut_59": "the min-p step with min_p = 0 drops nothing",
    "qwen25vl.generation.sampling.x__race__mutmut_4": "exponential_'s default rate is 1",
    "qwen25vl.generation.sampling.x__race__mutmut_7": "Exp(2) = Exp(1) / 2 from the same uniforms: argmax(p / q) unchanged",
    "qwen25vl.generation.sampling.x__race__mutmut_10": _DIM,
    **{f"qwen25vl.generation.sampling.x__row_values__mutmut_{n}": "Python floats become float32, the logits' dtype"
       for n in (2, 5)},
    **{f"qwen25vl.generation.sampling.x__row_values__mutmut_{n}": _CPU for n in (3, 6)},
    **{f"qwen25vl.generation.sampling.x__scale__mutmut_{n}": _CPU for n in (3, 5)},
    "qwen25vl.generation.sampling.x_apply_repetition_penalty__mutmut_8": "a zero logit is 0 divided or multiplied",
    "qwen25vl.generation.sampling.x_make_generator__mutmut_3": _CPU,
    **{f"qwen25vl.generation.sampling.x_sample__mutmut_{n}": _CPU for n in (21, 24, 99, 101)},
    **{f"qwen25vl.generation.sampling.x_sample__mutmut_{n}": _DIM for n in (42, 63, 72, 95)},
    "qwen25vl.generation.sampling.x_sample__mutmut_57": "sort's default dim is -1",
    **{f"qwen25vl.generation.sampling.x_sample__mutmut_{n}":
       "rows without filters sent through the filter path: filters that drop nothing, the same distribution"
       for n in (48, 50, 51, 52)},
    "qwen25vl.generation.sampling.x_sample__mutmut_49": "a top_k = 1 row is greedy and never reaches the draw",
    **{f"qwen25vl.generation.sampling.x_sampling_probs__mutmut_{n}": _CPU for n in (19, 22)},
    **{f"qwen25vl.generation.sampling.x_sampling_probs__mutmut_{n}": _DIM for n in (47, 56)},
    "qwen25vl.generation.sampling.x_sampling_probs__mutmut_41": "sort's default dim is -1",
    **{f"qwen25vl.generation.sampling.x_seen_mask__mutmut_{n}": "the width of an empty list of rows is never used"
       for n in (4, 7)},
    **{f"qwen25vl.generation.sampling.x_seen_mask__mutmut_{n}": _CPU for n in (20, 25, 29)},
    **{f"qwen25vl.generation.sampling.x_seen_mask__mutmut_{n}":
       "lists of Python ints become int64 anyway (an empty row scatters nothing)" for n in (10, 12)},
    "qwen25vl.generation.sampling.x_seen_mask__mutmut_17": "-2 is an invalid id as -1 is: skipped the same way",
    "qwen25vl.generation.sampling.x_seen_mask__mutmut_32": "one more dropped column",
    "qwen25vl.generation.sampling.x_seen_mask__mutmut_37": "id == vocab_size lands in the dropped column either way",
    # processing/chat_template.py
    "qwen25vl.processing.chat_template.x__tojson__mutmut_2": "ensure_ascii=None is falsy, as False is",
    # processing/image.py (resize math)
    "qwen25vl.processing.image.x__share_budget__mutmut_22":
        "at exactly the budget a shrink of 1 caps each item at its own resized area: the same sizes",
    # tasks/grounding.py
    "qwen25vl.tasks.grounding.x_format_grounding__mutmut_4": "ensure_ascii=None is falsy, as False is",
    # vision_layout.py
    **{f"qwen25vl.vision_layout.x__make_layout__mutmut_{n}": _CPU for n in (50, 51, 53, 55, 57, 59, 61)},
    "qwen25vl.vision_layout.x_grids_from_tensor__mutmut_2": "a tensor iterated row by row gives the same ints",
    "qwen25vl.vision_layout.x_window_index__mutmut_48": "every window holds a unit, so bincount is that long anyway",
    # model/attention.py
    **{f"qwen25vl.model.attention.x__batched__mutmut_{n}": _CPU for n in (28, 64)},
    **{f"qwen25vl.model.attention.x__lower_right__mutmut_{n}": _CPU for n in (4, 6, 9, 11)},
    **{f"qwen25vl.model.attention.x__packed__mutmut_{n}": _CPU for n in (28, 30)},
    **{f"qwen25vl.model.attention.x__packed__mutmut_{n}": "a plan on another device: unreachable with CPU-only tensors"
       for n in range(31, 37)},
    **{f"qwen25vl.model.attention.x__packed__mutmut_{n}": _CUDA for n in range(43, 79)},
    "qwen25vl.model.attention.x_attention__mutmut_11": "max_seqlen is read only by the CUDA varlen kernel",
    "qwen25vl.model.attention.x__grouped_sdpa__mutmut_2": "an output buffer that one group then fills: same values",
    # data/packing.py
    **{f"qwen25vl.data.packing.x_collate_pack__mutmut_{n}":
       "int64 lengths are summed into the int32 cu_seqlens buffer: the same dtype and values" for n in (7, 9)},
    # train/losses.py
    "qwen25vl.train.losses.x_full_cross_entropy__mutmut_8": "cross_entropy's default ignore_index is -100 (IGNORE)",
    "qwen25vl.train.losses.x\u01c1_ChunkedCE\u01c1forward__mutmut_1":
        "autograd casts a returned gradient to its input's dtype: the head's fp32 gradient becomes bf16 anyway",
    "qwen25vl.train.losses.x\u01c1_ChunkedCE\u01c1backward__mutmut_11":
        "autograd casts a returned gradient to its input's dtype: the head's fp32 gradient becomes bf16 anyway",
    **{f"qwen25vl.train.losses.x\u01c1_ChunkedCE\u01c1forward__mutmut_{n}": _CPU for n in (17, 20, 24, 27, 61, 63)},
    "qwen25vl.train.losses.x\u01c1_ChunkedCE\u01c1forward__mutmut_44": _DIM,
    **{f"qwen25vl.train.losses.x\u01c1_ChunkedCE\u01c1forward__mutmut_{n}":
       "a gradient not wanted is already None: saving it 'anyway' saves None" for n in (77, 79)},
    # eval/metrics.py
    "qwen25vl.eval.metrics.x_levenshtein__mutmut_1": "edit distance is symmetric: swapping two strings of equal length",
}


@dataclass
class Outcome:
    module: Module
    status: dict[str, str] = field(default_factory=dict)  # mutant name -> killed / survived / timeout / no tests ...
    diffs: dict[str, str] = field(default_factory=dict)  # survivor -> diff
    seconds: float = 0.0
    error: str = ""

    def count(self, *statuses: str) -> int:
        return sum(1 for s in self.status.values() if s in statuses)

    @property
    def survivors(self) -> list[str]:
        return sorted((n for n, s in self.status.items() if s not in ("killed", "timeout", "segfault")), key=_natural)

    def row(self) -> str:
        m = self.module
        if self.error:
            return f"| {m.name} | `{m.path}` | error: {self.error} | | | | |"
        total = len(self.status)
        killed = self.count("killed", "timeout", "segfault")  # a hang or a crash under the mutant is a detection
        equivalent = sum(1 for n in self.survivors if n in EQUIVALENT)
        alive = len(self.survivors) - equivalent
        judged = total - equivalent
        rate = f"{100 * killed / judged:.1f}%" if judged else "n/a"
        return f"| {m.name} | `{m.path}` | {total} | {killed} | {alive} | {equivalent} | {rate} |"


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _selected_tests(module: Module) -> list[str]:
    files = sorted({f for pattern in module.tests for f in glob.glob(pattern, root_dir=ROOT)})
    if not files:
        raise SystemExit(f"{module.name}: no test file matches {module.tests}")
    return files


def _prepare(module: Module) -> Path:
    """A fresh scratch tree: the package, the tests and a pyproject.toml that configures mutmut for this module."""
    work = SCRATCH / module.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "qwen25vl", work / "qwen25vl", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    tests = _selected_tests(module)
    toml = "\n".join([
        "[tool.mutmut]",
        'source_paths = ["qwen25vl"]',
        f"only_mutate = [{json.dumps(module.path)}]",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider"]',
        'process_isolation = "forkserver"',  # torch is not fork-safe after its thread pools start
        "use_git_change_detection = false",
        "",
        "[tool.pytest.ini_options]",
        'addopts = "-ra"',
        "",
    ])
    (work / "pyproject.toml").write_text(toml)
    return work


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", QWEN25VL_TEST_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def run_module(module: Module, children: int, report_only: bool = False) -> Outcome:
    """Mutate and test one module (or, with report_only, read the results its last run left in the scratch tree)."""
    out = Outcome(module)
    work = SCRATCH / module.name
    returncode = None
    if not report_only:
        work = _prepare(module)
        start = time.monotonic()
        cmd = [str(MUTMUT), "run", "--max-children", str(children), *module.patterns()]
        with open(work / "mutmut.log", "w") as log:
            returncode = subprocess.run(cmd, cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
        out.seconds = time.monotonic() - start
        (work / "seconds").write_text(f"{out.seconds:.0f}")
    elif (work / "seconds").exists():
        out.seconds = float((work / "seconds").read_text())
    meta = work / "mutants" / (module.path + ".meta")
    if not meta.exists():
        out.error = f"mutmut exited {returncode} without results (see {work / 'mutmut.log'})"
        return out
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    wanted = [re.compile(_fnmatch_re(p)) for p in module.patterns()]
    for name, code in codes.items():
        if any(w.fullmatch(name) for w in wanted):
            out.status[name] = _status(code)
    out.diffs = _diffs(work, module.path, out.survivors)
    if not out.status:
        out.error = f"no mutants ran (see {work / 'mutmut.log'})"
    return out


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
path, names = sys.argv[1], json.loads(sys.stdin.read())
print(json.dumps({n: get_diff_for_mutant(n, path=path) for n in names}))
"""


def _diffs(work: Path, path: str, names: list[str]) -> dict[str, str]:
    """Each mutant's diff, in one process (`mutmut show` costs seconds per call)."""
    if not names:
        return {}
    done = subprocess.run([sys.executable, "-c", _DIFFS, path], cwd=work, env=_env(), input=json.dumps(names),
                          capture_output=True, text=True)
    if done.returncode:
        return {n: f"(diff unavailable: {done.stderr.strip().splitlines()[-1:]})" for n in names}
    return {n: _trim_diff(d) for n, d in json.loads(done.stdout).items()}


def _fnmatch_re(pattern: str) -> str:
    return ".*".join(re.escape(part) for part in pattern.split("*"))


def _status(code) -> str:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code[code]


def _trim_diff(text: str) -> str:
    """The changed lines of `mutmut show`'s unified diff (without the headers)."""
    lines = [ln for ln in text.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    return "\n".join(lines)


def report(outcomes: list[Outcome]) -> str:
    lines = [
        BEGIN,
        "",
        "| module | file | mutants | killed | survived | equivalent | kill rate (non-equivalent) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [o.row() for o in outcomes]
    lines.append("")
    lines.append("Killed includes mutants that hang (timeout) or crash. Equivalent: mutants that cannot change "
                 "behaviour, and (said so in their reason) those that cannot change it on the CPU-only test machines "
                 "(device placement, the CUDA kernel branch). Measured with "
                 f"`make mutate` (mutmut, {_mutmut_version()}); per-module wall time: "
                 + ", ".join(f"{o.module.name} {o.seconds / 60:.1f} min" for o in outcomes if o.seconds) + ".")
    for o in outcomes:
        if not o.survivors:
            continue
        lines += ["", f"### Survivors: {o.module.name}", ""]
        for name in o.survivors:
            reason = EQUIVALENT.get(name)
            verdict = f"equivalent: {reason}" if reason else f"**not killed** ({o.status[name]})"
            lines.append(f"- `{name}`: {verdict}")
            diff = o.diffs.get(name, "")
            if diff:
                lines += ["  ```diff", *("  " + d for d in diff.splitlines()), "  ```"]
    stale = sorted(n for n in EQUIVALENT if not any(n in o.status for o in outcomes)
                   and any(n.startswith(o.module.path[:-3].replace("/", ".") + ".") for o in outcomes))
    if stale:
        lines += ["", "Equivalent entries not found among this run's mutants (renumbered? re-check them): "
                  + ", ".join(f"`{n}`" for n in stale)]
    lines += ["", END]
    return "\n".join(lines)


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def merge_into_testing_md(outcomes: list[Outcome]) -> None:
    """Replace the results block; modules not run this time keep their previous rows and survivor lists. Rows and
    survivor sections come out in module order whichever modules ran."""
    text = TESTING_MD.read_text() if TESTING_MD.exists() else f"# Testing\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    ran = {o.module.name for o in outcomes}
    TESTING_MD.write_text(head + merge_blocks(report(outcomes), old, ran) + tail)


_SECTION = re.compile(r"^### Survivors: (\S+)\n(.*?)(?=^### Survivors: |^Equivalent entries|\Z)", re.S | re.M)


def merge_blocks(block: str, old: str, ran: set[str]) -> str:
    """This run's report `block` with the rows and survivor sections of the modules that did not run taken from the
    previous block `old`, all in module order."""
    order = {m.name: i for i, m in enumerate(MODULES)}
    body = block.replace(BEGIN, "").replace(END, "").strip("\n")
    stale = ""
    at = body.find("\nEquivalent entries not found")
    if at >= 0:
        body, stale = body[:at].rstrip("\n"), body[at:].strip("\n")
    first = body.find("### Survivors: ")
    intro, new_sections = (body, "") if first < 0 else (body[:first].rstrip("\n"), body[first:])
    sections = {name: text.strip("\n") for name, text in _SECTION.findall(new_sections)}
    rows = [ln for ln in old.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip() in order
            and ln.split("|")[1].strip() not in ran]
    for name, text in _SECTION.findall(old.split("\nEquivalent entries not found")[0]):
        if name in order and name not in ran:
            sections[name] = text.strip("\n")
    lines = intro.splitlines()
    table = [i for i, ln in enumerate(lines) if ln.startswith("| ")]
    header, body_rows = lines[table[0]:table[0] + 2], lines[table[0] + 2:table[-1] + 1] + rows
    body_rows.sort(key=lambda r: order.get(r.split("|")[1].strip(), len(order)))
    lines[table[0]:table[-1] + 1] = header + body_rows
    out = [BEGIN, "", *lines]
    for name in sorted(sections, key=lambda n: order.get(n, len(order))):
        out += ["", f"### Survivors: {name}", "", sections[name]]
    if stale:
        out += ["", stale]
    return "\n".join(out + ["", END])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to run (default all): {', '.join(BY_NAME)}")
    parser.add_argument("--children", type=int, default=2, help="mutants run in parallel (default 2)")
    parser.add_argument("--list", action="store_true", help="print the modules and their test selections")
    parser.add_argument("--no-write", action="store_true", help="print the report instead of updating TESTING.md")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the last run's results in build/mutate/ (after editing EQUIVALENT)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in BY_NAME]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {list(BY_NAME)}")
    modules = [BY_NAME[m] for m in args.modules] or MODULES
    if args.list:
        for m in modules:
            funcs = f" [{', '.join(m.functions)}]" if m.functions else ""
            print(f"{m.name}: {m.path}{funcs} <- {' '.join(_selected_tests(m))}")
        return 0
    outcomes = []
    for m in modules:
        print(f"== {m.name}: {m.path} <- {' '.join(_selected_tests(m))}", flush=True)
        o = run_module(m, args.children, args.report_only)
        outcomes.append(o)
        print(o.row(), f"({o.seconds / 60:.1f} min)", flush=True)
    if args.no_write:
        print(report(outcomes))
    else:
        merge_into_testing_md(outcomes)
        print(f"wrote {TESTING_MD.relative_to(ROOT)}")
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
