# walfs — WAL-E compatible FUSE filesystem for PostgreSQL archives.
#   make            release build:  build/release/walfs
#   make asan       ASan+UBSan build: build/asan/walfs
#   make check      every test (unit, RGW, FUSE, PostgreSQL end to end), both builds
#   make install    binary and docs under $(PREFIX)
#   make fuzz       libFuzzer targets (clang): build/fuzz/fuzz_<name>, see tests/fuzz/

PREFIX ?= /usr/local
PKGS := fuse3 libcurl openssl lzo2 libisal libarchive libxml-2.0 json-c
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS))

CC ?= cc
WARN := -Wall -Wextra -Wshadow -Wformat=2 -Wno-unused-parameter
BASE_CFLAGS := -std=c11 -DFUSE_USE_VERSION=312 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I. $(WARN) $(PKG_CFLAGS) -pthread
RELEASE_CFLAGS := -O2 -g
ASAN_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

VERSION := 0.1.0
# Every folder but tests/ is one part of walfs (README "Layout of the source");
# cli/main.c alone is the program, the rest is a static library, so a test
# links only the objects it uses.
LIB_DIRS := common codec s3 store pg wale wal backup push fuse
LIB_SRCS := $(wildcard $(addsuffix /*.c,$(LIB_DIRS))) cli/config.c
MAIN_SRC := cli/main.c
TEST_SRCS := $(wildcard tests/unit/test_*.c)
# What the tests share (tests/unit/fault_store.c): a library of its own.
TEST_SUPPORT_SRCS := $(filter-out $(TEST_SRCS),$(wildcard tests/unit/*.c))
# -MMD -MP: each object depends on the headers it includes, and no more.
DEP_FLAGS = -MMD -MP -MF $(@:.o=.d)
LINK_FLAGS := -Wl,--as-needed

define build_variant
$(1)_OBJS := $$(patsubst %.c,build/$(1)/%.o,$$(LIB_SRCS))
$(1)_TESTS := $$(patsubst tests/unit/%.c,build/$(1)/tests/%,$$(TEST_SRCS))
$(1)_TEST_SUPPORT := $$(patsubst tests/unit/%.c,build/$(1)/tests/%.o,$$(TEST_SUPPORT_SRCS))

build/$(1)/%.o: %.c
	@mkdir -p $$(dir $$@)
	$$(CC) $$(BASE_CFLAGS) $(2) $$(DEP_FLAGS) -DWALFS_VERSION='"$$(VERSION)"' -c $$< -o $$@

build/$(1)/libwalfs.a: $$($(1)_OBJS)
	rm -f $$@
	ar rcs $$@ $$^

build/$(1)/walfs: build/$(1)/cli/main.o build/$(1)/libwalfs.a
	$$(CC) $(2) -pthread $$(LINK_FLAGS) -o $$@ $$^ $$(PKG_LIBS)

build/$(1)/tests/%.o: tests/unit/%.c
	@mkdir -p $$(dir $$@)
	$$(CC) $$(BASE_CFLAGS) $(2) $$(DEP_FLAGS) -c $$< -o $$@

build/$(1)/tests/libtestsupport.a: $$($(1)_TEST_SUPPORT)
	rm -f $$@
	ar rcs $$@ $$^

build/$(1)/tests/%: build/$(1)/tests/%.o build/$(1)/tests/libtestsupport.a build/$(1)/libwalfs.a
	$$(CC) $(2) -pthread $$(LINK_FLAGS) -o $$@ $$^ $$(PKG_LIBS)

$(1): build/$(1)/walfs $$($(1)_TESTS)

-include $$($(1)_OBJS:.o=.d) build/$(1)/cli/main.d $$(patsubst %,%.d,$$($(1)_TESTS)) $$($(1)_TEST_SUPPORT:.o=.d)
endef

$(eval $(call build_variant,release,$(RELEASE_CFLAGS)))
$(eval $(call build_variant,asan,$(ASAN_CFLAGS)))
.SECONDARY:

# libFuzzer targets: the library built again with clang's fuzzer
# instrumentation and ASan+UBSan, one binary per tests/fuzz/fuzz_*.c.
FUZZ_CC ?= clang-14
FUZZ_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_OBJS := $(patsubst %.c,build/fuzz/obj/%.o,$(LIB_SRCS))
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRCS))

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_CFLAGS) $(DEP_FLAGS) -fsanitize=fuzzer-no-link -DWALFS_VERSION='"$(VERSION)"' -c $< -o $@

build/fuzz/libwalfs.a: $(FUZZ_OBJS)
	rm -f $@
	ar rcs $@ $^

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c build/fuzz/libwalfs.a
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_CFLAGS) -MMD -MP -MF $@.d -fsanitize=fuzzer -o $@ $< build/fuzz/libwalfs.a $(PKG_LIBS)

-include $(FUZZ_OBJS:.o=.d) $(patsubst %,%.d,$(FUZZ_BINS))

fuzz: $(FUZZ_BINS)

all: release
	@ln -sf build/release/walfs walfs

check: release asan
	bash tests/run.sh

check-unit: release asan
	WALFS_TEST_ONLY=unit bash tests/run.sh

install: release
	install -D -m 0755 build/release/walfs $(DESTDIR)$(PREFIX)/bin/walfs
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/walfs/README.md

clean:
	rm -rf build walfs

.PHONY: all release asan check check-unit install clean fuzz
.DEFAULT_GOAL := all
