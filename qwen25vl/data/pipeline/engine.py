"""The model behind model-based operators: one loaded checkpoint per process (a pool worker or a Ray actor), asked
through the eval runner's answerer protocol `(conversations, sampling) -> [str | Answer]`, one batched generation
per call. A failing batch (a media file the processor refuses) is retried one conversation at a time, so one bad
record fails alone."""

from __future__ import annotations

from qwen25vl.errors import Qwen25VLError

_LOADED: dict[tuple, object] = {}
LOADS = {"count": 0}  # how many times this process loaded a model (tests: once per worker or actor)


def answerer_for(model: str | None, threads: int | None = 1, device: str | None = None):
    """The process's `EngineAnswerer` for checkpoint `model` (None: the embedded tiny model), loaded on first use."""
    key = (model, threads, device)
    if key not in _LOADED:
        import qwen25vl
        from qwen25vl.eval.runner import EngineAnswerer

        _LOADED[key] = EngineAnswerer(qwen25vl.load(model, device=device, threads=threads))
        LOADS["count"] += 1
    return _LOADED[key]


def ask(answerer, conversations: list[list[dict]], sampling: dict) -> list[str | None]:
    """One text per conversation; None where the model could not take the conversation."""
    try:
        answers = answerer(conversations, sampling)
    except (Qwen25VLError, OSError):
        if len(conversations) == 1:
            return [None]
        return [a for c in conversations for a in ask(answerer, [c], sampling)]
    if len(answers) != len(conversations):
        raise RuntimeError(f"answerer returned {len(answers)} answers for {len(conversations)} conversations")
    return [getattr(a, "text", a) for a in answers]


class ModelOp:
    """Mixin of the settings every model-based operator shares: `model`, `batch_size` (conversations per
    generation), `max_new_tokens`, `threads`, `device`, and on Ray `actors` (the actor pool's size) and `num_gpus`
    (per actor); `answerer=` injects a callable instead (tests, APIs)."""

    uses_model = True

    def _init_model(self, model=None, batch_size=8, max_new_tokens=64, threads=1, device=None, answerer=None,
                    actors=1, num_gpus=0):
        self.model, self.batch_size, self.max_new_tokens = model, int(batch_size), int(max_new_tokens)
        self.threads, self.device, self._answerer = threads, device, answerer
        self.actors, self.num_gpus = int(actors), float(num_gpus)
        return {"model": model, "batch_size": batch_size, "max_new_tokens": max_new_tokens, "threads": threads,
                "device": device, "actors": actors, "num_gpus": num_gpus}

    @property
    def answerer(self):
        if self._answerer is None:
            self._answerer = answerer_for(self.model, self.threads, self.device)
        return self._answerer

    def __getstate__(self):  # a loaded model never travels to a worker: each loads its own
        state = dict(self.__dict__)
        if not callable(state.get("_answerer")) or hasattr(state["_answerer"], "vlm"):
            state["_answerer"] = None
        return state
