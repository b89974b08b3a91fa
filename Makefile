# Entry points. `make up` sets everything up and runs the demo; `make test` runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
ART     ?= artifacts
TARGET  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
DATASET ?= amazon-food-kitchen
MODELS  ?= models
CONFIG  ?=
EPOCHS  ?= 30
# Models per trained checkpoint: K seeds trained at once, merged into one model that ranks as
# their ensemble (interest_model/trainer.py); 1 trains a single model.
MEMBERS ?= 3
RESULTS ?= results
# `make engine` serves the trained checkpoint of DATASET when there is one (models/ is committed).
CHECKPOINT ?= $(if $(wildcard $(MODELS)/$(DATASET)/interest_head.json),$(MODELS)/$(DATASET))
CONFIG_ARG := $(if $(CONFIG),--config $(CONFIG))
PROTO_SRC := gateway/proto/interest/v1/gateway.proto
PROTO_OUT := gateway/proto/interest/v1/gateway_pb2.py gateway/proto/interest/v1/gateway_pb2_grpc.py
STAMP   := $(VENV)/.installed
MODEL   := model_repository/interest_encoder/VERSION.json

.PHONY: help up setup proto data train eval engine ngc-repo serve demo test unit integration lint clean bench catalogue-scale ann-compare fuzz tools FORCE

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

up: setup data  ## first command: set up, build the engine (CPU), serve and run the demo (Ctrl-C stops)
	$(MAKE) --no-print-directory engine TARGET=cpu
	$(PY) -m devtools.stack --demo $(CONFIG_ARG)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps -e .
	touch $@

setup: $(STAMP) $(PROTO_OUT)  ## virtual environment with pinned dependencies + generated gRPC code

$(PROTO_OUT) &: $(PROTO_SRC) $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)

proto: $(PROTO_OUT)  ## generate gRPC code from gateway/proto

data: setup  ## check the dataset the project carries (data/, copied from shared/data) and summarise it
	$(PY) -m interest_model.datacheck $(CONFIG_ARG)

# Re-export when the checkpoint or config named changes (the config's platforms calibrate and
# gate the INT8 model) or any of the checkpoint's files does.
$(ART)/.checkpoint: FORCE
	@mkdir -p $(ART); echo "$(strip $(CHECKPOINT) $(CONFIG))" | cmp -s - $@ || echo "$(strip $(CHECKPOINT) $(CONFIG))" > $@

$(ART)/model.fp32.onnx: $(STAMP) $(ART)/.checkpoint $(if $(CHECKPOINT),$(wildcard $(CHECKPOINT)/interest_head.* $(CHECKPOINT)/interest_tuned_layers.pt $(CHECKPOINT)/*.safetensors))
	$(PY) -m quantize.export --out $@ $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

FORCE:

# INT8 activations: int8 for TensorRT (GPU); uint8 with zero point 128 on CPU, where ONNX
# Runtime's u8 x s8 kernels run 1.5x faster than s8 x s8 (both symmetric, same accuracy).
ACT     := $(if $(filter gpu,$(TARGET)),int8,uint8)
INT8    := $(ART)/model.int8-$(ACT).onnx

.PRECIOUS: $(ART)/model.int8-%.onnx $(ART)/validation-%.json
$(ART)/model.int8-%.onnx: $(ART)/model.fp32.onnx quantize/int8.py quantize/smooth.py
	$(PY) -m quantize.int8 --fp32 $< --out $@ --activations $* $(CONFIG_ARG)

$(ART)/validation-%.json: $(ART)/model.int8-%.onnx quantize/validate.py
	$(PY) -m quantize.validate --reference $(ART)/model.fp32.onnx --candidate $< --report $@ $(CONFIG_ARG)

engine: setup $(ART)/validation-$(ACT).json  ## export -> INT8 Q/DQ -> accuracy gate -> (TensorRT on GPU) -> model_repository/
ifeq ($(TARGET),gpu)
	$(PY) -m quantize.trt_build --onnx $(INT8) --out $(ART)/model.plan
	$(PY) -m quantize.install --onnx $(INT8) --report $(ART)/validation-$(ACT).json --target gpu --plan $(ART)/model.plan $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(CONFIG_ARG)
	@echo "installed a TensorRT plan: serve model_repository/ with the NGC tritonserver container (see docs/operations.md)"
else
	$(PY) -m quantize.trt_build --onnx $(INT8) --out $(ART)/model.plan || test $$? -eq 3
	$(PY) -m quantize.install --onnx $(INT8) --report $(ART)/validation-$(ACT).json --target cpu $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(CONFIG_ARG)
endif
	$(MAKE) --no-print-directory ngc-repo

# The repositories the NGC tritonserver container serves without the python backend (docs/deployment.md):
# NGC/model_repository_cpu (onnxruntime_onnx) and NGC/model_repository_gpu (tensorrt_plan; the plan
# only where `make engine TARGET=gpu` built one).
NGC     ?= var/ngc

ngc-repo: setup $(ART)/validation-$(ACT).json  ## NGC Triton repositories under var/ngc/: onnxruntime_onnx (CPU) + tensorrt_plan (GPU); make engine runs it
	$(PY) -m quantize.ngc_repository --onnx $(INT8) --report $(ART)/validation-$(ACT).json --out $(NGC) \
	  $(if $(filter gpu,$(TARGET)),--plan $(ART)/model.plan) $(CONFIG_ARG)

# Shares of the overlap users (users on both platforms) the few-overlap evaluation models keep.
OVERLAP ?= 1 5 20
# Seeds of the NEW_ITEMS_SPLITS new-items hold-out splits (each its own 20% of items and its own
# MEMBERS-seed model, members seeded S .. S+MEMBERS-1): 0, MEMBERS, 2*MEMBERS, ... so that no two
# splits share a member seed (0 3 6 with 3 members); seed 0 in models/DATASET-new-items, seed S
# in models/DATASET-new-items-seedS.
NEW_ITEMS_SPLITS ?= 3
ifeq ($(filter-out 0,$(MEMBERS)),)
$(error MEMBERS must be at least 1)
endif
NEW_ITEMS_SEEDS ?= $(shell seq 0 $(MEMBERS) $$(( ($(NEW_ITEMS_SPLITS) - 1) * $(MEMBERS) )))
new_items_dir = $(MODELS)/$(DATASET)-new-items$(if $(filter-out 0,$(1)),-seed$(1))

train: setup  ## train DATASET's model, the new-items hold-out models (NEW_ITEMS_SEEDS) and the few-overlap models (OVERLAP %) into models/, each a merged 3-seed ensemble (~90 min on 2 cores; resumes)
	$(PY) -m interest_model.trainer $(CONFIG_ARG) --dataset $(DATASET) --out $(MODELS)/$(DATASET) \
	  --epochs $(EPOCHS) --members $(MEMBERS) $(TRAIN_ARGS)
	$(foreach seed,$(NEW_ITEMS_SEEDS),$(PY) -m interest_model.trainer $(CONFIG_ARG) --dataset $(DATASET) \
	  --out $(call new_items_dir,$(seed)) --epochs $(EPOCHS) --members $(MEMBERS) \
	  --new-items-fraction 0.2 $(TRAIN_ARGS) --seed $(seed) &&) true
	for pct in $(OVERLAP); do \
	  $(PY) -m interest_model.trainer $(CONFIG_ARG) --dataset $(DATASET) --out $(MODELS)/$(DATASET)-overlap-$$pct \
	    --epochs $(EPOCHS) --members $(MEMBERS) --overlap-fraction $$(awk "BEGIN { print $$pct / 100 }") $(TRAIN_ARGS) || exit 1; \
	done

# `make eval` builds, installs and serves its own copy of the engine under var/eval/DATASET/,
# so evaluating a pair never replaces the engine `make engine` put in model_repository/.
EVAL_DIR  = var/eval/$(DATASET)
EVAL_REPO = INTEREST_MODEL_REPOSITORY=$(abspath $(EVAL_DIR))/model_repository

eval: setup  ## evaluate models/DATASET vs the baselines offline, INT8, and through the running stack: results/eval.* (RESULTS=dir: elsewhere)
	$(EVAL_REPO) $(MAKE) --no-print-directory engine TARGET=cpu CHECKPOINT=$(MODELS)/$(DATASET) ART=$(EVAL_DIR)/artifacts NGC=$(EVAL_DIR)/ngc
	$(PY) -m interest_model.evaluation.offline $(CONFIG_ARG) --dataset $(DATASET) --checkpoint $(MODELS)/$(DATASET) \
	  $(foreach seed,$(NEW_ITEMS_SEEDS),$(if $(wildcard $(call new_items_dir,$(seed))/interest_assets.npz),--new-items-checkpoint $(call new_items_dir,$(seed)))) \
	  --int8 $(EVAL_DIR)/artifacts/model.int8-uint8.onnx \
	  $(foreach pct,$(OVERLAP),$(if $(wildcard $(MODELS)/$(DATASET)-overlap-$(pct)/interest_assets.npz),--overlap-checkpoint $(MODELS)/$(DATASET)-overlap-$(pct))) \
	  --out $(EVAL_DIR)/offline.json
	$(EVAL_REPO) $(PY) -m devtools.served_eval $(CONFIG_ARG) --offline $(EVAL_DIR)/offline.json --out $(RESULTS)

serve: setup  ## Triton + gateway in the foreground (needs `make engine`); Ctrl-C stops both
	$(PY) -m devtools.stack $(CONFIG_ARG)

demo: setup  ## demo client against a running gateway
	$(PY) -m devtools.demo $(CONFIG_ARG)

test: setup tools  ## second command: unit + integration tests (real Triton, gateway and Prometheus)
	$(PY) -m pytest -q tests

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup tools
	$(PY) -m pytest -q tests/integration

tools:  ## Debian's prometheus server (the monitoring test scrapes the real stack with it) and postgresql (the store tests' server)
	bash build/install-prometheus.sh
	bash build/install-postgresql.sh

bench: engine  ## benchmark: seed vs in-process limit vs this stack, perf_analyzer, one gateway vs two on PostgreSQL, catalogues of 10^4..10^6 items, Recommend while added items are indexed; writes results/bench.*
	bash build/install-perf-analyzer.sh
	bash build/install-postgresql.sh
	$(PY) -m bench.run
	$(MAKE) --no-print-directory fuzz

catalogue-scale: engine  ## only make bench's catalogue part: Recommend on 10^4, 10^5 and 10^6 kitchen items (the 10^6 index is built once, minutes): var/bench/catalogue_scale.*
	$(PY) -m bench.catalogue_scale

ann-compare: engine  ## faiss-cpu, hnswlib and usearch side by side on 10^4..10^6 items made from the real catalogue: var/bench/ann_compare.json (docs/ranking.md)
	HNSWLIB_NO_NATIVE=1 $(PIP) install --quiet -r build/ann-requirements.txt
	$(PY) -m bench.ann_compare

fuzz: setup  ## 2,500 fuzzed examples x 8 RPCs = 20,000 bad-input cases against the real stack
	FUZZ_EXAMPLES=2500 $(PY) -m pytest -q -p no:cacheprovider tests/integration/test_reliability.py \
	  -k fuzzed --hypothesis-show-statistics

PACKAGES := interest_core interest_model gateway quantize devtools bench

lint: setup  ## ruff + mypy + import-linter (the layer contracts in pyproject.toml; make test checks them too)
	$(VENV)/bin/ruff check $(PACKAGES) tests model_repository
	$(VENV)/bin/mypy $(PACKAGES) tests
	$(VENV)/bin/lint-imports

clean:  ## remove generated artifacts and state (keeps the virtual environment)
	rm -rf $(ART) var model_repository/interest_encoder/1/model.onnx model_repository/interest_encoder/1/model.plan \
	  model_repository/interest_encoder/config.pbtxt model_repository/interest_encoder/catalogue-* \
	  $(MODEL) $(PROTO_OUT) gateway/proto/interest/v1/gateway_pb2.pyi
