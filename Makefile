# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test setup lint bench clean proto

$(BIN)/streamer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# Silero VAD's ONNX file, without the torch its package asks for: onnxruntime runs it.
	$(BIN)/pip install -q --no-deps silero-vad
	@touch $@

setup: $(BIN)/streamer

run: setup
	# honcho runs the Procfile through /bin/sh: put the venv's `streamer` on its PATH.
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start

# Most tests wait on real time (streams paced as a microphone would, models that sleep): six at
# once keep two cores busy. Those that measure CPU or race timers run by themselves afterwards.
test: setup
	$(BIN)/python -m pytest -n 6 --dist worksteal -m "not alone"
	$(BIN)/python -m pytest -m alone

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/hop.py
	$(BIN)/python bench/restart.py
	$(BIN)/python bench/flood.py

clean:
	rm -rf $(VENV) *.egg-info

# The gRPC code in src/streamer/api/ is made from its streamer.proto (and committed): after changing the
# .proto, in any environment with grpcio-tools.
proto:
	$(PYTHON) -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src --pyi_out=src src/streamer/api/streamer.proto
