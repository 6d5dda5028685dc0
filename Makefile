# Two entry points: `make run` (the main job) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench linux system-deps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Debian packages: gcc/binutils build the guests, cpuid cross-checks the decoders.
system-deps:
	@command -v cpuid >/dev/null && command -v gcc >/dev/null && command -v objcopy >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpuid gcc binutils)

# The main job: a guest with virtualized Arch LBR on the best backend (KVM, else unicorn),
# then the conformance summary of that backend.
run: $(STAMP) system-deps
	$(VENV)/bin/vlbr run hello --backend auto
	$(VENV)/bin/vlbr conformance --backend auto --summary

test: $(STAMP) system-deps
	$(PY) -m pytest -q

# Debian's cloud kernel and busybox-static (apt-get download into ~/.cache/vlbr, never the
# repo) booted on vlbr's PC machine; Linux's perf driver takes the virtual Arch LBR.
linux: $(STAMP) system-deps
	$(VENV)/bin/vlbr linux

# Every benchmark's JSON lines, kept in build/bench.jsonl, then README's table made from them.
bench: $(STAMP) system-deps
	mkdir -p build && : > build/bench.jsonl
	for b in benchmarks/bench_*.py; do echo "== $$b" >&2; \
	  $(PY) $$b > build/bench.out || exit 1; cat build/bench.out >> build/bench.jsonl; \
	  cat build/bench.out; done
	$(PY) benchmarks/readme_table.py build/bench.jsonl

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
