# Two commands for a fresh machine:  `make demo`  and  `make test`.
# TORCH_SPEC picks the torch to install when the venv has none, e.g.
#   make demo TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: setup demo test clean

setup: $(VENV)/.installed  # everything: the package and the extras its tests need (ONNX, onnxruntime, OpenVINO)

# the package alone, what the demo needs (the extras took 20 s more to install on a Zen 3, pip cache warm)
$(VENV)/.core: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and explicitly, so that no dependency can pull a CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed: $(VENV)/.core
	$(BIN)/pip install -e ".[dev]"
	touch $@

demo: $(VENV)/.core
	@mkdir -p $(DEMO_OUT) && date +%s > $(DEMO_OUT)/.start
	$(BIN)/contextseg env --no-measure
	$(BIN)/contextseg train configs/synthetic_ocr.yaml output_dir=$(DEMO_OUT)
	$(BIN)/contextseg eval configs/synthetic_ocr.yaml --checkpoint $(DEMO_OUT)/best.pt --out $(DEMO_OUT)/eval.json
	$(BIN)/python -c "from contextseg.data.synthetic import write_synthetic_folder as w; w('$(DEMO_OUT)/samples', 4, seed=1000)"
	$(BIN)/contextseg predict $(DEMO_OUT)/samples/images --checkpoint $(DEMO_OUT)/best.pt --out $(DEMO_OUT)/predictions
	@echo "demo done in $$(( $$(date +%s) - $$(cat $(DEMO_OUT)/.start) )) s (train, eval, predict): curves in $(DEMO_OUT)/curves.png, overlays in $(DEMO_OUT)/predictions"
	@rm -f $(DEMO_OUT)/.start

# a newcomer's `make test` leaves out the 16 tests marked slow (about 1 minute instead of 4.5 on 2 AVX2 cores);
# CI (CI=true) runs them all
PYTEST_MARKS ?= $(if $(CI),,-m "not slow")

test: setup
	$(BIN)/python -m pytest -q -ra $(PYTEST_MARKS)

clean:
	rm -rf $(VENV) runs .pytest_cache
