# nb — see README.md. `make run` runs the main notebook end to end; `make test` runs the tests.
SWIFT ?= swift
NOTEBOOK ?= notebooks/GPT2FineTuneHybrid.md

# One configuration for everything (run, test, bench): release, so numeric code runs at
# full speed in tests too; -enable-testing keeps the tests' @testable imports working and
# lets all three share one build.
FLAGS = -c release -Xswiftc -enable-testing

.PHONY: setup build run test bench fuzz sanitize clean

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

# libFuzzer on the readers of untrusted bytes (Sources/FuzzEntries), FUZZ_SECONDS per target,
# from the committed corpus and this build's valid seeds; new inputs that add coverage are
# merged into the committed corpus (replayed by `make test`), crashers are kept there too.
FUZZ_SECONDS ?= 120
FUZZ_TARGETS ?= nbct server gguf safetensors notebook keyring
FUZZ_CORPUS = Tests/NotebookTests/Fixtures/fuzz-corpus
fuzz: setup
	$(SWIFT) build -c release --scratch-path .build-fuzz --product nb-fuzz \
		-Xswiftc -sanitize=fuzzer,address -Xswiftc -DNB_LIBFUZZER -Xswiftc -parse-as-library
	$(SWIFT) build $(FLAGS) --product nb-fuzz
	rm -rf .build-fuzz/seeds && .build/release/nb-fuzz --write-seeds .build-fuzz/seeds
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p .build-fuzz/corpus/$$t $(FUZZ_CORPUS)/$$t .build-fuzz/seeds/$$t .build-fuzz/crashes/$$t; \
		echo "== $$t: $(FUZZ_SECONDS) s"; \
		NB_FUZZ_TARGET=$$t .build-fuzz/release/nb-fuzz .build-fuzz/corpus/$$t $(FUZZ_CORPUS)/$$t .build-fuzz/seeds/$$t \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1 \
			-artifact_prefix=.build-fuzz/crashes/$$t/ 2>&1 | grep -E "^(stat::|==|INFO: seed|SUMMARY|.*(crash|leak|timeout|oom)-)" ; \
		cp .build-fuzz/crashes/$$t/* $(FUZZ_CORPUS)/$$t/ 2>/dev/null || true; \
		NB_FUZZ_TARGET=$$t .build-fuzz/release/nb-fuzz -merge=1 $(FUZZ_CORPUS)/$$t .build-fuzz/corpus/$$t 2>&1 | grep -E "MERGE-OUTER: [0-9]+ new" ; \
	done

# The unit tests under AddressSanitizer (every target) and UndefinedBehaviorSanitizer (the C
# kernels: Swift code traps on overflow and bounds itself, and swiftc offers no UBSan on
# Linux); a debug build of its own, the heavy numeric suites skipped as too slow there. Leak
# detection is off: the Swift runtime and Foundation keep process-lifetime caches that
# LeakSanitizer reports at every exit of `nb`.
SANITIZE_SKIP ?= TrainingNotebookTests|DeploymentNotebookTests|EvaluationNotebookTests|ModelGolden|TrainingGolden|GradientCheck|HubDownload|BrowserTests
SANITIZE_FLAGS = --scratch-path .build-sanitize --sanitize=address -Xcc -fsanitize=undefined -Xcc -fno-sanitize-recover=undefined \
	-Xswiftc -Xclang-linker -Xswiftc -fsanitize=undefined
sanitize: setup
	$(SWIFT) build $(SANITIZE_FLAGS) --build-tests -Xswiftc -enable-testing
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=16 UBSAN_OPTIONS=print_stacktrace=1 \
		$(SWIFT) test $(SANITIZE_FLAGS) --skip-build --skip "$(SANITIZE_SKIP)"

clean:
	rm -rf .build .build-fuzz .build-sanitize outputs/.nb outputs/*.html
