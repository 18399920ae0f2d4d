# nb — see README.md. `make run` runs the main notebook end to end; `make test` runs the tests.
SWIFT ?= swift
NOTEBOOK ?= notebooks/GPT2FineTuneHybrid.md

.PHONY: setup build run test bench clean

setup:
	@bash scripts/setup.sh

build: setup
	$(SWIFT) build -c release --product nb

run: build
	.build/release/nb $(NOTEBOOK)

test: setup
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

bench: setup
	$(SWIFT) build -c release --product nb
	$(SWIFT) build -c release --product Benchmarks
	.build/release/Benchmarks

clean:
	rm -rf .build outputs/.nb outputs/*.html
