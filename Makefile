# `make test` works on a fresh machine: it builds .venv, installs everything, runs pytest.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test bench mutate fuzz clean demo tiny-model

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned: 2.13.0 is the CPU wheel on the machine's disk; a bare `torch` pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q tests

# Side-by-side timings against the reference; figures land in benchmarks/results/ (see BENCHMARKS.md). Minutes.
bench: $(STAMP)
	$(PY) benchmarks/bench_vision.py --threads 2 --repeats 3 --out benchmarks/results/vision_table.md
	$(PY) benchmarks/bench_model.py --threads 2 --rounds 3 --tokens 1000
	$(PY) benchmarks/bench_decode.py --threads 2 --reps 3
	$(PY) benchmarks/bench_image.py --reps 3
	$(PY) benchmarks/bench_tokenizer.py --turns 300 --reps 7
	$(PY) benchmarks/bench_serve.py --threads 1 --rounds 2

# Mutation testing of the core pure modules with mutmut (tens of minutes; not part of `make test`): kill rates and
# surviving mutants go to TESTING.md. `make mutate MODULES="positions sampling"` runs some modules only.
mutate: $(STAMP)
	$(PY) tools/mutate.py $(MODULES)

# 10,000 malformed inputs through the processor, then 1,000 through the server; tables land in RELIABILITY.md.
fuzz: $(STAMP)
	$(PY) -m qwen25vl.testing.fuzz_run --count 10000 --workers 2 --out RELIABILITY.md
	$(PY) -m qwen25vl.testing.fuzz_run --count 1000 --workers 2 --server --out RELIABILITY.md

# The embedded tiny model on scenes it never saw: locate, draw, count; well under two minutes after install.
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m qwen25vl.demo --out build/demo

# Reproduce qwen25vl/assets/tiny-model/ from nothing on CPU: data, tokenizer, vision bootstrap, joint training,
# the presence, refine and skills stages, export, held-out scores and the model card, on both cores (the measured
# stage times are in the model card: from nothing, 1.93 h on 2 threads of an AVX-512 host).
tiny-model: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m qwen25vl.recipes.tiny --out build/tiny --threads 2 --evaluate --install qwen25vl/assets/tiny-model

clean:
	rm -rf $(VENV) build *.egg-info
