# strata build. `make` builds build/libstrata.{a,so} and build/strata.
# make test | make asan | make bench | make run | make fuzz    (V=1 for full command lines)

CC      ?= cc
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
BUILD   ?= build
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

ifeq ($(V),1)
Q :=
else
Q := @
endif

WARN    := -Wall -Wextra -Werror -Wno-unused-parameter
BASEFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -g -I. -Iinclude $(WARN) \
	-I/usr/include/x86_64-linux-gnu/openblas-pthread -I/usr/include/cjson
OPT     ?= -O2
CFLAGS  ?= $(OPT)
ALLCFLAGS = $(BASEFLAGS) $(CFLAGS) $(EXTRA_CFLAGS)
AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mavx512vbmi -mfma -mf16c -mavx2

LIBS    := -L/usr/lib/x86_64-linux-gnu/openblas-pthread -lopenblas -lhwloc -lnuma -luring -lcjson \
	-lxxhash -lpcre2-8 -lutf8proc -ledit -lm -lpthread -ldl -lrt

# CUDA: on where nvcc exists, unless NO_CUDA=1 (the sanitizer build sets it).
ifeq ($(NO_CUDA),1)
NVCC :=
endif
ifneq ($(NVCC),)
CUDA := 1
# sm_80 (A100), sm_89 (Ada: hardware e4m3 converts), sm_90 (H100) + compute_90 PTX for newer GPUs.
NVCCFLAGS ?= -O2 -std=c++17 -Xcompiler -fPIC,-Wall,-Wextra,-Wno-unused-parameter,-Wno-unknown-pragmas -I. -Iinclude \
	-gencode arch=compute_80,code=sm_80 -gencode arch=compute_89,code=sm_89 \
	-gencode arch=compute_90,code=[sm_90,compute_90]
CUDA_SRC  := $(wildcard kernels/*.cu)
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart_static
KERNELS_C := $(filter-out kernels/nocuda.c,$(wildcard kernels/*.c))
ALLCFLAGS += -DST_HAVE_CUDA=1
else
CUDA :=
CUDA_SRC  :=
CUDA_LIBS :=
KERNELS_C := kernels/nocuda.c
endif

LIB_SRC := $(wildcard base/*.c io/*.c cpu/*.c offload/*.c) $(filter-out engine/main.c,$(wildcard engine/*.c)) \
	$(KERNELS_C) $(wildcard bench/*.c)
OBJ     := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(CUDA_SRC:%.cu=$(BUILD)/obj/%.cu.o)
DEPS    := $(OBJ:.o=.d)
TEST_SRC := $(wildcard tests/test_*.c)
TESTS   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_HELPERS := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))

.PHONY: all test asan bench run clean deps cuda-note fuzz
all: $(BUILD)/libstrata.a $(BUILD)/libstrata.so $(BUILD)/strata

deps: $(BUILD)/.deps-ok
$(BUILD)/.deps-ok: .ci/deps
	@mkdir -p $(BUILD)
	@bash .ci/deps
	@touch $@

ifeq ($(CUDA),)
cuda-note:
	@echo "note: nvcc not found (or NO_CUDA=1): CUDA kernels are left out of this build"
else
cuda-note:
endif

$(BUILD)/obj/%.o: %.c | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALLCFLAGS) $(if $(findstring _avx512,$<),$(AVX512_FLAGS),$(if $(findstring _avx2,$<),$(AVX2_FLAGS))) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libstrata.a: $(OBJ) | cuda-note
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $(OBJ)

$(BUILD)/libstrata.so: $(OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -shared -o $@ $(OBJ) $(LIBS) $(CUDA_LIBS) -lstdc++

$(BUILD)/strata: $(BUILD)/obj/engine/main.o $(BUILD)/libstrata.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -o $@ $< $(BUILD)/libstrata.a $(LIBS) $(CUDA_LIBS) -lstdc++

$(BUILD)/tests/%: tests/%.c $(TEST_HELPERS) $(BUILD)/libstrata.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALLCFLAGS) -Itests -o $@ $< $(TEST_HELPERS) $(BUILD)/libstrata.a $(LIBS) $(CUDA_LIBS) -lstdc++ -lcmocka

test: all $(TESTS)
	@STRATA_BIN=$(BUILD)/strata bash tests/run_all.sh $(TESTS)

# The same suites under AddressSanitizer + UndefinedBehaviorSanitizer, in build/asan.
asan:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/asan NO_CUDA=1 OPT="-O1 -fno-omit-frame-pointer" \
		EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all" \
		LDSAN="-fsanitize=address,undefined" STRATA_ASAN=1 test

ifneq ($(LDSAN),)
LIBS += $(LDSAN)
endif

bench: all
	$(BUILD)/strata bench kernels

# libFuzzer harnesses of the file readers (tests/fuzz/fz_*.c; clang; not part of make test):
# build/fuzz/fz_NAME, each file's top comment says how to run it.
FUZZ_SRC := $(wildcard tests/fuzz/fz_*.c)
fuzz:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/fuzz CC=clang NO_CUDA=1 OPT="-O1" \
		EXTRA_CFLAGS="-fsanitize=fuzzer-no-link,address,undefined -Wno-error" $(BUILD)/fuzz/libstrata.a
	$(Q)for f in $(FUZZ_SRC); do \
		clang $(BASEFLAGS) -O1 -fsanitize=fuzzer,address,undefined -o $(BUILD)/fuzz/$$(basename $$f .c) $$f \
			$(BUILD)/fuzz/libstrata.a $(LIBS) || exit 1; done

run: all
	@bash tests/tools/make_run.sh $(BUILD)/strata

clean:
	rm -rf $(BUILD)

-include $(DEPS)
