"""tools/mutate.py's merge of a partial run into TESTING.md: modules that did not run keep their rows and survivor
sections, and everything comes out in module order whichever modules ran."""

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("mutate_tool", Path(__file__).parents[1] / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
sys.modules["mutate_tool"] = mutate  # its dataclasses look their module up
_spec.loader.exec_module(mutate)


def _block(modules: list[str], note: str = "") -> str:
    lines = [mutate.BEGIN, "", "| module | file | mutants |", "|---|---|---|"]
    lines += [f"| {m} | `{m}.py` | {i + 1}{note} |" for i, m in enumerate(modules)]
    lines += ["", "Killed includes mutants that hang."]
    for m in modules:
        lines += ["", f"### Survivors: {m}", "", f"- `{m}_mutant_1`: equivalent{note}"]
    return "\n".join(lines + ["", mutate.END])


def test_partial_run_keeps_the_others_in_module_order():
    names = [m.name for m in mutate.MODULES][:4]
    old = _block(names)
    new = _block([names[2]], note=" (new)")  # only the third module ran this time
    merged = mutate.merge_blocks(new, old.replace(mutate.BEGIN, "").replace(mutate.END, ""), {names[2]})
    rows = [ln.split("|")[1].strip() for ln in merged.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows == names
    assert f"| {names[2]} | `{names[2]}.py` | 1 (new) |" in merged and "| 3 |" not in merged
    heads = [ln[len("### Survivors: "):] for ln in merged.splitlines() if ln.startswith("### Survivors: ")]
    assert heads == names
    assert merged.count("equivalent (new)") == 1 and f"- `{names[0]}_mutant_1`: equivalent\n" in merged
    assert mutate.merge_blocks(old, "", set(names)) == old  # a full run is written as reported
