# Three commands (see README): `make demo` sets up and renders the offline demo; `make test` sets up and tests;
# `make app` serves the interactive refocusing app on http://127.0.0.1:7860.
# Setup is idempotent: the virtualenv is rebuilt only when requirements.txt changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test app browser bench evaluate evaluate-record reproduce

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) inference_hf.py --renderer classical --demo --output_dir outputs/demo

# One pytest-xdist worker per core. Bytecode caches are written (gitignored) even where PYTHONDONTWRITEBYTECODE is
# set, so the Python processes the suite starts do not each recompile the repository. Tests marked xdist_group run
# on one worker (tests/xdist_groups.py; pytest-xdist 3.8's own --dist loadgroup does nothing with pytest 9).
test: $(STAMP) browser
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n auto

app: $(STAMP)
	$(PY) app.py

# The browser test (tests/webapp/test_browser.py) drives Debian's headless Chromium through chromedriver.
# Installed once when missing (CI runs as root with apt); without root it says so and the test skips (fails in CI).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: chromium/chromedriver are missing and cannot be installed here (needs root and apt-get);" \
	         "the browser test skips (and fails in CI)"; \
	  fi; \
	fi

# Benchmarks write their sections of BENCHMARKS.md; run them on an otherwise idle machine.
bench: $(STAMP)
	$(PY) -m benchmarks.bench_renderers
	$(PY) -m benchmarks.bench_dataset
	$(PY) -m benchmarks.bench_pisa
	$(PY) -m benchmarks.bench_pisa --plan sparse
	$(PY) -m benchmarks.bench_pipeline
	$(PY) -m benchmarks.bench_train
	$(PY) -m benchmarks.bench_app
	$(PY) -m benchmarks.bench_batching
	$(PY) -m benchmarks.bench_sharding
	$(PY) -m benchmarks.bench_sdxl  # the real SDXL shape: ~40 min and ~20 GB on a CPU

# Renders the seeded evaluation benchmark with every available method; results in outputs/benchmark/
# (summary.md, per-method reports). The tracked BENCHMARKS.md is left alone.
evaluate: $(STAMP)
	$(PY) -m scripts.run_benchmark --data benchmark_data --out outputs/benchmark

# The same, and records the table in the Evaluation section of BENCHMARKS.md (run on an idle machine).
evaluate-record: $(STAMP)
	$(PY) -m scripts.run_benchmark --data benchmark_data --out outputs/benchmark --write_benchmarks

# The paper's benchmarks in one command (PROTOCOLS.md): BLB, EBB pairs and the layered set, every method, tables,
# CSVs, charts and worst cases in $(REPRODUCE_OUT). Point the variables at the downloaded sets, e.g.
# `make reproduce BLB_DATA=/data/BLB EBB_DATA=/data/ebb_prepared BOKEHDIFF_ARGS="--adapter zcx65535/bokehdiff"`.
# Rerunning reuses every finished render.
BLB_DATA ?= data_sets/BLB
EBB_DATA ?= data_sets/ebb_prepared
LAYERED_DATA ?= benchmark_data
REPRODUCE_OUT ?= outputs/reproduce
BOKEHDIFF_ARGS ?=
reproduce: $(STAMP)
	$(PY) -m scripts.reproduce --benchmark all --data blb=$(BLB_DATA) ebb=$(EBB_DATA) layered=$(LAYERED_DATA) \
	  --bokehdiff_args "$(BOKEHDIFF_ARGS)" --out $(REPRODUCE_OUT)
