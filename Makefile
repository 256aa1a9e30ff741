# Kafscale build.  `make` builds everything into $(BUILD)/:
#   build/kafscale-broker      the broker
#   build/kafscale-unit-tests  the unit-test binary
# Other targets: run, test, test-unit, test-integration, asan, tsan, fuzz, gen, clean.
# Dependencies come from pkg-config; scripts/install-deps.sh installs them.

BUILD   ?= build
CC      ?= cc
PKGS    := sqlite3 libprotobuf-c libcurl libcrypto json-c libmicrohttpd
SAN     ?=

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT      ?= -O2
CFLAGS   := -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Werror \
            -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter \
            -Isrc -I$(BUILD)/gen $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDLIBS   := $(PKG_LIBS) -lpthread -lm

ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(SAN),thread)
CFLAGS  += -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS += -fsanitize=thread
endif

# Protobuf sources are generated at build time from proto/*.proto.
PROTOS     := $(wildcard proto/*.proto)
PROTO_C    := $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(PROTOS))
PROTO_H    := $(PROTO_C:.c=.h)

LIB_SRC    := $(filter-out src/main.c,$(shell find src -name '*.c' | sort))
LIB_OBJ    := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRC)) $(PROTO_C:.c=.o)
TEST_SRC   := $(sort $(wildcard tests/unit/*.c))
TEST_OBJ   := $(patsubst %.c,$(BUILD)/obj/%.o,$(TEST_SRC))
EX_SRC     := $(sort $(wildcard examples/*.c))
EX_BIN     := $(patsubst examples/%.c,$(BUILD)/examples/%,$(EX_SRC))

BROKER     := $(BUILD)/kafscale-broker
UNIT       := $(BUILD)/kafscale-unit-tests

.PHONY: all run test test-unit test-integration asan tsan fuzz gen deps test-deps clean
all: $(BROKER) $(UNIT) $(EX_BIN)

# Generated sources are kept (not removed as intermediates).
.SECONDARY: $(PROTO_C) $(PROTO_H)

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

$(BUILD)/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c
	$(CC) $(CFLAGS) -Wno-missing-prototypes -c $< -o $@

$(BUILD)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libkafscale.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BROKER): $(BUILD)/obj/src/main.o $(BUILD)/libkafscale.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(UNIT): $(TEST_OBJ) $(BUILD)/libkafscale.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/examples/%: examples/%.c $(BUILD)/libkafscale.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# --- set-up ----------------------------------------------------------------
deps:
	@bash scripts/install-deps.sh

test-deps:
	@bash scripts/install-deps.sh --test

# Install what is missing, build, start the broker in embedded mode on 127.0.0.1:9092.
run: deps
	@$(MAKE) --no-print-directory all
	KAFSCALE_BROKER_ADDR=$${KAFSCALE_BROKER_ADDR:-127.0.0.1:9092} ./$(BROKER)

# Install test dependencies and run every test suite (what CI runs).
test: test-deps
	@bash scripts/run-tests.sh

test-unit: $(UNIT)
	./$(UNIT)

test-integration: all
	KAFSCALE_BROKER_BIN=$(abspath $(BROKER)) /usr/bin/python3 -m pytest -q tests/integration

asan:
	@$(MAKE) --no-print-directory BUILD=build-asan SAN=1 OPT=-O1 all

# ThreadSanitizer build of the unit tests (the concurrency tests run under it).
tsan:
	@$(MAKE) --no-print-directory BUILD=build-tsan SAN=thread OPT=-O1 build-tsan/kafscale-unit-tests

# libFuzzer targets (clang).
FUZZ_SRC := $(sort $(wildcard tests/fuzz/*.c))
FUZZ_BIN := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
fuzz: $(FUZZ_BIN)
$(BUILD)/fuzz/%: tests/fuzz/%.c $(LIB_SRC) $(PROTO_C) $(PROTO_H)
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -I$(BUILD)/gen \
	  $(PKG_CFLAGS) -o $@ $< $(LIB_SRC) $(PROTO_C) $(LDLIBS)

# Regenerate the committed protocol codec from Apache Kafka's JSON schemas.
KAFKA_SCHEMAS ?= ../shared/kafka-protocol
gen:
	/usr/bin/python3 tools/gen_protocol.py --schemas $(KAFKA_SCHEMAS) --out src/protocol/gen

clean:
	rm -rf build build-asan build-tsan
