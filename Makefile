# make demo   install what is missing, build, start a local cluster, show jobs flowing
# make test   every test (unit, pg_regress, isolation, real clients); CI runs this
# make bench  the benchmark (see README, Performance)
# make bench-scale  the cost curves (bench/src/scale.rs; SCALE=workers,queues,... for some)
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps install test demo demo-stop clean bench bench-scale

all: install

deps:
	@scripts/ensure-deps.sh

# Built first, then renamed over the installed library (scripts/install.sh):
# running servers keep the file they mapped, new backends never miss one.
install: deps
	scripts/install.sh

test: deps
	scripts/run-tests.sh

demo: install
	scripts/demo.sh

demo-stop:
	scripts/cluster.sh stop .run/demo-cluster

clean:
	cargo clean
	rm -rf .run

bench: install
	cargo run --release -q -p queue-bench -- $(BENCH_ARGS)

SCALE ?= all
bench-scale: install
	cargo run --release -q -p queue-bench -- --scale $(SCALE) $(BENCH_ARGS)
