# Two commands (see README): `make demo` sets up and renders the offline demo; `make test` sets up and tests.
# Setup is idempotent: the virtualenv is rebuilt only when requirements.txt changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench evaluate evaluate-record

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) inference_hf.py --renderer classical --demo --output_dir outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# Benchmarks write their sections of BENCHMARKS.md; run them on an otherwise idle machine.
bench: $(STAMP)
	$(PY) -m benchmarks.bench_renderers
	$(PY) -m benchmarks.bench_dataset
	$(PY) -m benchmarks.bench_pisa
	$(PY) -m benchmarks.bench_pisa --plan sparse
	$(PY) -m benchmarks.bench_pipeline
	$(PY) -m benchmarks.bench_train

# Renders the seeded evaluation benchmark with every available method; results in outputs/benchmark/
# (summary.md, per-method reports). The tracked BENCHMARKS.md is left alone.
evaluate: $(STAMP)
	$(PY) -m scripts.run_benchmark --data benchmark_data --out outputs/benchmark

# The same, and records the table in the Evaluation section of BENCHMARKS.md (run on an idle machine).
evaluate-record: $(STAMP)
	$(PY) -m scripts.run_benchmark --data benchmark_data --out outputs/benchmark --write_benchmarks
