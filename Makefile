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

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-only

clean:
	rm -rf $(VENV) runs .pytest_cache
