# The two commands a newcomer needs: `make demo` and `make test`.
# Both create the virtual environment on first use. Every demo stage leaves a stamp file, so an
# interrupted `make demo` picks up where it stopped (training stages also resume from their checkpoints).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= demo_out
# Demo sizes: a 1723-vertex synthetic body (SMPL's 6890 works too, ~4x slower to train on a CPU),
# 42 motions of 8 s, sampled at 10 meshes/s, seen by 4 cameras.
DEMO_VERTICES  ?= 1723
DEMO_SEQUENCES ?= 42
DEMO_SECONDS   ?= 8
PRETRAIN_STEPS ?= 1250

.PHONY: demo test venv clean bench demo-data demo-pretrain demo-finetune demo-hands cameras-experiment

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
	@$(BIN)/python -m pip install -q -e ".[dev,s3]"
	@touch $@

venv: $(BIN)/.installed

test: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/mpt-data bench
	$(BIN)/mpt-train bench --shards $(OUT)/store

demo: demo-data demo-pretrain demo-finetune demo-hands
	@echo; echo "demo finished: pictures and figures are in $(OUT)/"; ls $(OUT)/*.png $(OUT)/*.json $(OUT)/*.md 2>/dev/null

# --- data: synthetic body + motions -> a frozen store -------------------------------------------
demo-data: $(OUT)/store.frozen

$(OUT)/synth/synth_config.json: | venv
	$(BIN)/mpt-data synth --out $(OUT)/synth --vertices $(DEMO_VERTICES) --sequences $(DEMO_SEQUENCES) \
	  --seconds $(DEMO_SECONDS)

$(OUT)/store.frozen: $(OUT)/synth/synth_config.json
	$(BIN)/mpt-data build --recipe pipelines/demo.yaml --amass-root $(OUT)/synth/amass \
	  --body-models $(OUT)/synth/body_models --out $(OUT)/store --resume
	$(BIN)/mpt-data freeze $(OUT)/store
	$(BIN)/mpt-data verify $(OUT)/store
	$(BIN)/mpt-data info $(OUT)/store
	$(BIN)/mpt-data preview $(OUT)/store --mesh 0 --out $(OUT)/preview.png
	touch $@

# --- pre-training: tiny preset on the CPU (or the GPU when there is one) -------------------------
demo-pretrain: $(OUT)/pretrain.done

$(OUT)/pretrain.done: $(OUT)/store.frozen
	$(BIN)/mpt-train pretrain --shards $(OUT)/store --preset tiny --out $(OUT)/pretrain \
	  --steps $(PRETRAIN_STEPS) --workers 1 --resume
	$(BIN)/mpt-train evaluate --checkpoint $(OUT)/pretrain/latest --shards $(OUT)/store --split val \
	  --json-out $(OUT)/pretrain_eval.json --picture $(OUT)/pretrain_val.png
	$(BIN)/mpt-train plot $(OUT)/pretrain --out $(OUT)/pretrain_curves.png
	touch $@

# --- fine-tuning on synthetic images: a small 2D pose network, then pre-trained vs from scratch ---
# The same FT_STEPS for all four runs; "1pct" trains on 1 % of the images (10 of 1000). The 2D network stays
# as trained and its heatmap peaks enter the transformer as pre-training's Gaussians (--feed keypoints); no
# augmentation at this budget (see README, "Fine-tuning: what limits it"). The four runs are separate
# targets, so `make -j2 demo` runs two at a time.
POSE_STEPS ?= 1600
FT_STEPS   ?= 600
FT = --data $(OUT)/images/mixture.yaml --val $(OUT)/images/shards/synth_val --backbone tiny \
     --backbone-checkpoint $(OUT)/posenet/pose_network.pth --feed keypoints --freeze-backbone --no-augment \
     --steps $(FT_STEPS) --batch-size 8 --lr 1e-4 --workers 1 --val-every 0 --resume
FT_RUNS = ft scratch ft1pct scratch1pct
demo-finetune: $(OUT)/finetune.done

$(OUT)/images.done: $(OUT)/synth/synth_config.json
	$(BIN)/mpt-data synth-images --amass-root $(OUT)/synth/amass --body-models $(OUT)/synth/body_models \
	  --out $(OUT)/images --train-images 1000 --val-images 100 --workers 2
	$(BIN)/mpt-data images --annotations $(OUT)/images/synth_train.npz --images $(OUT)/images \
	  --out $(OUT)/images/shards --dataset synth_train
	$(BIN)/mpt-data images --annotations $(OUT)/images/synth_val.npz --images $(OUT)/images \
	  --out $(OUT)/images/shards --dataset synth_val
	touch $@

$(OUT)/posenet.done: $(OUT)/images.done
	$(BIN)/mpt-train train-pose --data $(OUT)/images/mixture.yaml --val $(OUT)/images/shards/synth_val \
	  --backbone tiny --out $(OUT)/posenet --steps $(POSE_STEPS) --batch-size 16 --lr 2e-3 --sigma 8 --workers 1 --resume
	touch $@

$(OUT)/ft.done: $(OUT)/pretrain.done $(OUT)/posenet.done
	$(BIN)/mpt-train finetune --init $(OUT)/pretrain/latest $(FT) --out $(OUT)/ft
	touch $@
$(OUT)/scratch.done: $(OUT)/pretrain.done $(OUT)/posenet.done
	$(BIN)/mpt-train finetune --init $(OUT)/pretrain/latest $(FT) --scratch-store $(OUT)/store --out $(OUT)/scratch
	touch $@
$(OUT)/ft1pct.done: $(OUT)/pretrain.done $(OUT)/posenet.done
	$(BIN)/mpt-train finetune --init $(OUT)/pretrain/latest $(FT) --fraction 0.01 --out $(OUT)/ft1pct
	touch $@
$(OUT)/scratch1pct.done: $(OUT)/pretrain.done $(OUT)/posenet.done
	$(BIN)/mpt-train finetune --init $(OUT)/pretrain/latest $(FT) --fraction 0.01 --scratch-store $(OUT)/store \
	  --out $(OUT)/scratch1pct
	touch $@

$(OUT)/finetune.done: $(foreach r,$(FT_RUNS),$(OUT)/$(r).done)
	@# the four runs with the rows they must beat (mean pose, no fine-tuning) and their ceiling (oracle)
	$(BIN)/mpt-train evaluate-images --protocol train-metrics --image-shards $(OUT)/images/shards/synth_val \
	  --checkpoint "pre-trained=$(OUT)/ft" --checkpoint "from scratch=$(OUT)/scratch" \
	  --checkpoint "pre-trained, 1 %=$(OUT)/ft1pct" --checkpoint "from scratch, 1 %=$(OUT)/scratch1pct" \
	  --out $(OUT)/finetune_results.md --picture $(OUT)/finetune_compare.png
	$(BIN)/mpt-train plot pretrained=$(OUT)/ft scratch=$(OUT)/scratch pretrained_1pct=$(OUT)/ft1pct \
	  scratch_1pct=$(OUT)/scratch1pct --out $(OUT)/finetune_curves.png
	@# one held-out image, cropped as training crops are (the annotation's box, 1.2 margin)
	$(BIN)/mpt-train predict --checkpoint $(OUT)/ft1pct --image $(OUT)/images/images/val/000003.jpg --out $(OUT)/predict \
	  --bbox $$($(BIN)/python -c "import numpy as np; a = np.load('$(OUT)/images/synth_val.npz'); \
	    w = float(a['scale'][3]) * 200 / 1.2; x, y = a['center'][3]; print(f'{x - w/2:.1f},{y - w/2:.1f},{w:.1f},{w:.1f}')")
	touch $@

# --- hands: the synthetic MANO-format hand -> a hand store -> tiny-hand pre-training -> evaluation picture ----
# The right hand and the mirrored left hand of each sampled frame of the same motions, 8 cameras on a sphere
# (pipelines/demo-hands.yaml). Two targets with stamps, beside the body stages: `make -j2 demo` overlaps them.
HAND_STEPS ?= 250
demo-hands: $(OUT)/hands_pretrain.done

$(OUT)/hand_store.frozen: $(OUT)/synth/synth_config.json
	$(BIN)/mpt-data build --recipe pipelines/demo-hands.yaml --amass-root $(OUT)/synth/amass \
	  --body-models $(OUT)/synth/hand_models --out $(OUT)/hand_store --resume
	$(BIN)/mpt-data freeze $(OUT)/hand_store
	$(BIN)/mpt-data verify $(OUT)/hand_store
	$(BIN)/mpt-data info $(OUT)/hand_store
	$(BIN)/mpt-data preview $(OUT)/hand_store --mesh 1 --out $(OUT)/hand_preview.png
	touch $@

$(OUT)/hands_pretrain.done: $(OUT)/hand_store.frozen
	$(BIN)/mpt-train pretrain --shards $(OUT)/hand_store --preset tiny-hand --out $(OUT)/hand_pretrain \
	  --steps $(HAND_STEPS) --val-every 100 --val-batches 8 --workers 1 --resume
	@# scored on the test split (384 meshes x 8 cameras), which training never validated on
	$(BIN)/mpt-train evaluate --checkpoint $(OUT)/hand_pretrain/latest --shards $(OUT)/hand_store --split test \
	  --json-out $(OUT)/hand_pretrain_eval.json --picture $(OUT)/hand_pretrain_test.png
	touch $@

# --- random cameras vs fixed rigs: the README's "Random cameras and held-out rigs" table ----------------
# One 8-camera store of the demo's motions; `tiny` pre-trained three times with the same seed and steps on
# (a) the store's 4 Human3.6M cameras (indices 0,2,4,6), (b) all 8, (c) --views random; each scored on the
# val split through the Human3.6M rig and the two held-out rigs (pipelines/rigs/).
CAM_STEPS ?= 500
CAM_RIGS  := h36m-s1 elevated-ring close-wide
CAM_RUNS  := rig4:--store-cameras=0,2,4,6 rig8: random:--views=random
cameras-experiment: $(OUT)/cameras_table.md

$(OUT)/cam_store.frozen: $(OUT)/synth/synth_config.json
	$(BIN)/mpt-data build --recipe pipelines/demo.yaml --amass-root $(OUT)/synth/amass \
	  --body-models $(OUT)/synth/body_models --cameras 8 --out $(OUT)/cam_store --resume
	$(BIN)/mpt-data freeze $(OUT)/cam_store
	touch $@

$(OUT)/cameras_table.md: $(OUT)/cam_store.frozen
	@set -e; for run in $(CAM_RUNS); do name=$${run%%:*}; args=$$(echo $${run#*:} | tr '=' ' '); \
	  OMP_NUM_THREADS=1 $(BIN)/mpt-train pretrain --shards $(OUT)/cam_store --preset tiny --steps $(CAM_STEPS) \
	    --seed 0 --val-batches 2 --workers 0 --out $(OUT)/cam_$$name --resume $$args; \
	  for rig in $(CAM_RIGS); do OMP_NUM_THREADS=1 $(BIN)/mpt-train evaluate --checkpoint $(OUT)/cam_$$name/latest \
	    --shards $(OUT)/cam_store --rig $$rig --batch-size 64 --max-batches 4 --device cpu \
	    --out $(OUT)/cam_$$name.$$rig.json; done; done
	$(BIN)/python -c "import json; rigs = '$(CAM_RIGS)'.split(); \
	  rows = ['| run | ' + ' | '.join(rigs) + ' |', '|---|' + '---|' * len(rigs)]; \
	  rows += ['| ' + n + ' | ' + ' | '.join('{pa_mpjpe:.1f} ({mpjpe:.1f})'.format(**json.load(open(f'$(OUT)/cam_{n}.{r}.json'))['overall']) \
	    for r in rigs) + ' |' for n in ('rig4', 'rig8', 'random')]; print('\n'.join(rows))" | tee $@

clean:
	rm -rf $(VENV) $(OUT)
