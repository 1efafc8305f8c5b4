# make demo   install what is missing, build, start a local cluster, show jobs flowing
# make test   every test (unit, pg_regress, isolation, real clients); CI runs this
# make bench  the benchmark (see README, Performance)
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps install test demo demo-stop clean bench

all: install

deps:
	@scripts/ensure-deps.sh

# The old library is unlinked first: copying over a queue.so that running
# servers have mapped makes them die of SIGBUS; unlinked, they keep theirs.
install: deps
	rm -f "$$(pg_config --pkglibdir)/queue.so"
	cargo pgrx install --release --pg-config "$$(command -v pg_config)" >/dev/null

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
