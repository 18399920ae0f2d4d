# nb — see README.md. `make run` runs the main notebook end to end; `make test` runs the tests.
SWIFT ?= swift
NOTEBOOK ?= notebooks/GPT2FineTuneHybrid.md

# One configuration for everything (run, test, bench): release, so numeric code runs at
# full speed in tests too; -enable-testing keeps the tests' @testable imports working and
# lets all three share one build.
FLAGS = -c release -Xswiftc -enable-testing

.PHONY: setup build run test bench clean

setup:
	@bash scripts/setup.sh

build: setup
	$(SWIFT) build $(FLAGS) --product nb

run: build
	.build/release/nb $(NOTEBOOK)

test: setup
	$(SWIFT) build $(FLAGS) --build-tests
	$(SWIFT) test $(FLAGS) --skip-build

bench: setup
	$(SWIFT) build $(FLAGS) --product nb
	$(SWIFT) build $(FLAGS) --product Benchmarks
	.build/release/Benchmarks

clean:
	rm -rf .build outputs/.nb outputs/*.html
