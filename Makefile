# Everyday targets. `make setup` then `make book` reproduces the default book.
PYTHON_BOOTSTRAP ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
# empty: bookrun's default, fungi_ssl.core.config.DEFAULT_PROFILE (the one place it is set)
PROFILE ?=
DATA    ?=
SEED    ?= 0
# empty: each notebook's default (ECM; the sample table's `rarefied` column)
GUILD   ?=
TARGET  ?=
# the sample table of DATA when it holds several, e.g. SAMPLES=my_am_table.csv
SAMPLES ?=
# chapter parameters, e.g. PARAMS="bbox=[-3.9,56.8,-3.0,57.3] years=[2018,2024] block_km=10"
PARAMS  ?=

.PHONY: setup test book notebooks html bench check-min-deps clean-book clean-cache format check

setup:
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[book,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fungi-ssl)"

test:
	$(PY) -m pytest $(if $(DATA),--real-data=$(abspath $(DATA)),)

# Execute every notebooks/NN_*.ipynb in order into book/, then render HTML.
book: notebooks html

notebooks:
	$(PY) -m fungi_ssl.book.runner $(if $(PROFILE),--profile $(PROFILE),) --seed $(SEED) $(if $(DATA),--data $(DATA),) $(if $(ONLY),--only $(ONLY),) $(if $(GUILD),--guild $(GUILD),) $(if $(TARGET),--target $(TARGET),) $(if $(SAMPLES),--samples '$(SAMPLES)',) $(if $(PARAMS),--param '$(PARAMS)',)

html:
	$(VENV)/bin/jupyter-book build . --path-output book --warningiserror

bench:
	$(PY) benchmarks/run_all.py

# Every dependency at its pyproject.toml floor in a throwaway venv, then pytest (needs PyPI).
check-min-deps:
	.ci/check-min-versions

format:
	$(VENV)/bin/ruff format fungi_ssl tests benchmarks

check:
	$(VENV)/bin/ruff check fungi_ssl tests benchmarks

clean-book:
	rm -rf book/_build book/results book/results-* book/[0-9][0-9]_*.ipynb

clean-cache:
	rm -rf data/cache
