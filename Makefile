# The two commands a newcomer needs: `make demo` and `make test`.
# Both create the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= demo_out

.PHONY: demo test venv clean bench

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@# A CPU machine gets the CPU build of torch, never multi-GB CUDA wheels;
	@# a machine with an NVIDIA driver (or a venv that already has torch) keeps its own.
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install -q torch; \
	  else $(BIN)/python -m pip install -q "torch==2.13.0" 2>/dev/null || \
	       $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; fi; \
	fi
	@$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m mpt_data.demo --out $(OUT)

test: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/mpt-data bench
	$(BIN)/mpt-train bench

clean:
	rm -rf $(VENV) $(OUT)
