# Two commands for a newcomer: `make demo` (set up + run the main job on the shipped demo teacher)
# and `make test` (set up + run the tests). Both create .venv when it is absent.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MOPE := $(VENV)/bin/mope

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned together with torchvision (a bare torchvision install upgrades torch)
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e ".[dev,openvino]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(MOPE) compress --out runs/demo

# The suite runs in two pytest processes. In one process, the torchrun test (tests/importance/test_distributed.py)
# died with SIGSEGV after the ~330 export/bench tests before it (native state of ONNX Runtime, OpenVINO,
# torch.export accumulates in one interpreter); each half passes on its own. Cause still open: see the notes.
TESTS_A := tests/bench tests/bundle tests/cli tests/compress tests/data tests/distill tests/eval tests/exporting
test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(TESTS_A)
	$(PY) -m pytest -q -p no:cacheprovider tests $(addprefix --ignore=,$(TESTS_A))

# the pytest-benchmark suites are benchmarks/bench_*.py, which pytest's default file pattern (test_*.py) skips;
# `make bench BENCH_ARGS=--benchmark-disable` runs each benchmark once as a plain test (a quick check that they run)
BENCH_ARGS ?= --benchmark-enable --benchmark-only
bench: setup
	$(PY) -m pytest benchmarks -o python_files='bench_*.py' -q -p no:cacheprovider $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
