"""Evaluation harness: the report's benchmarks (and our synthetic suite) on local files, through the batched
engine, with every setting logged beside every answer so that a score can be recomputed from its results file.

```
from qwen25vl.eval import get_task, run_task
summary = run_task(get_task("docvqa"), "data/docvqa", answerer, "results/docvqa.jsonl")
```
"""

from qwen25vl.eval.task import OFFICIAL, Profile, Sample, Skipped, Task, all_tasks, get_task

__all__ = ["OFFICIAL", "Profile", "Sample", "Skipped", "Task", "all_tasks", "get_task"]
