"""The task families; importing this package registers every task in `qwen25vl.eval.task.TASKS`."""

from qwen25vl.eval.tasks import choice, documents, grounding, synth, video  # noqa: F401
