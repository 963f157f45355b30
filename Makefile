# averis — FP4 (NVFP4) training in C. `make` builds the library and the
# `averis` binary with no optional dependency; optional ones are detected.
CC      ?= cc
BUILD   ?= build
WERROR  ?= 0
CFLAGS_BASE := -std=c11 -O2 -g -Wall -Wextra -ffp-contract=off -Iinclude -Isrc
ifeq ($(WERROR),1)
CFLAGS_BASE += -Werror
endif
LDLIBS  := -lm
SAN     ?=
ifneq ($(SAN),)
CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

# ---- optional features, detected ------------------------------------------
# $(call probe,FLAGS,PROGRAM) → 1 if PROGRAM (a printf format; \043 is '#') compiles and links
probe = $(shell printf $(2) | $(CC) -x c - -o /dev/null $(1) >/dev/null 2>&1 && echo 1 || echo 0)
HAVE_OPENMP := $(call probe,-fopenmp,'int main(void){return 0;}')
HAVE_X86    := $(call probe,-mavx512f -mavx512bw -mavx512vl -mavx512dq,'\043include <immintrin.h>\nint main(void){__m512 v=_mm512_setzero_ps();(void)v;return 0;}')
HAVE_BLAS   := 0
BLAS_LIB    :=
ifeq ($(call probe,-lopenblas,'\043include <cblas.h>\nint main(void){cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasNoTrans,0,0,0,0,0,0,0,0,0,0,0);return 0;}'),1)
HAVE_BLAS := 1
BLAS_LIB  := -lopenblas
CFLAGS_BASE += -DAVERIS_HAVE_BLAS
LDLIBS += -lopenblas
endif
HAVE_ZLIB   := $(call probe,-lz,'\043include <zlib.h>\nint main(void){return inflateInit((z_stream*)0);}')
ifeq ($(HAVE_ZLIB),1)
CFLAGS_BASE += -DAVERIS_HAVE_ZLIB
LDLIBS += -lz
endif
NVCC        ?= nvcc
HAVE_CUDA   := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo 1 || echo 0)
# CUDA=0 builds without the GPU path even where nvcc exists (the sanitizer
# build does: ASan and the CUDA runtime do not mix). CUDA_ARCH: sm_90 (Hopper).
CUDA        ?= $(if $(SAN),0,$(HAVE_CUDA))
CUDA_ARCH   ?= 90
CUDA_HOME   ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC) 2>/dev/null)))
NVCCFLAGS   := -std=c++17 -O3 -g -lineinfo -gencode=arch=compute_$(CUDA_ARCH),code=sm_$(CUDA_ARCH) \
               --fmad=false -prec-div=true -prec-sqrt=true -Iinclude -Isrc \
               -Xcompiler -Wall,-Wextra $(if $(filter 1,$(WERROR)),-Xcompiler -Werror -Werror all-warnings)
ifeq ($(CUDA),1)
CFLAGS_BASE += -DAVERIS_HAVE_CUDA
LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++ -ldl -lpthread
endif

ifeq ($(HAVE_OPENMP),1)
CFLAGS_BASE += -fopenmp
LDFLAGS += -fopenmp
endif
ifeq ($(HAVE_X86),1)
CFLAGS_BASE += -DAVERIS_HAVE_X86
endif
CFLAGS  ?=
ALL_CFLAGS = $(CFLAGS_BASE) $(CFLAGS)

yesno = $(if $(filter 1,$(1)),✓,✗)

# ---- sources ----------------------------------------------------------------
LIB_SRC   := src/status.c src/formats.c src/nvfp4.c src/io.c src/quant.c src/gemm.c src/qlinear.c src/json.c src/safetensors.c src/model.c src/tokenizer.c src/data.c src/ckpt.c src/backend_cpu.c src/backend_cuda.c src/train.c src/analysis.c src/cuda_opts.c
SIMD_SRC  := src/nvfp4_avx2.c src/nvfp4_avx512.c
TOOL_SRC  := tools/averis.c tools/cli.c tools/cmd_quant.c tools/cmd_prepare.c tools/cmd_train.c tools/cmd_sample.c tools/cmd_analyze.c
TEST_SRC  := $(wildcard tests/test_*.c)
CUDA_SRC  := cuda/profile.cu cuda/quant.cu cuda/qlinear.cu cuda/flash.cu cuda/attention.cu cuda/model.cu
OBJ       = $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC) $(SIMD_SRC))
ifeq ($(CUDA),1)
OBJ      += $(patsubst %.cu,$(BUILD)/%.o,$(CUDA_SRC))
else
OBJ      += $(BUILD)/src/cuda_stub.o
endif
LIB       = $(BUILD)/libaveris.a
BIN       = $(BUILD)/averis
TEST_BIN  = $(BUILD)/test_averis
BENCH_BIN = $(BUILD)/bench_quant $(BUILD)/bench_qlinear

.PHONY: cuda-tests all features test test-fast build-tests print-build bench clean fixtures demo data
all: features $(BIN)

features:
	@echo "averis build features:"
	@echo "  $(call yesno,$(HAVE_OPENMP)) OpenMP"
	@echo "  $(call yesno,$(HAVE_X86)) AVX2/AVX-512 kernels (chosen at run time)"
	@echo "  $(call yesno,$(HAVE_BLAS)) BLAS (OpenBLAS)"
	@echo "  $(call yesno,$(HAVE_ZLIB)) zlib (reading the default corpus)"
	@echo "  $(call yesno,$(CUDA)) CUDA path (nvcc, sm_$(CUDA_ARCH)$(if $(filter 1,$(HAVE_CUDA)),,: no toolkit))"

$(BUILD)/src/gemm.o $(BUILD)/src/model.o: ALL_CFLAGS += -O3
$(BUILD)/src/nvfp4_avx2.o: ALL_CFLAGS += -mavx2
$(BUILD)/src/nvfp4_avx512.o: ALL_CFLAGS += -mavx512f -mavx512bw -mavx512vl -mavx512dq

$(BUILD)/%.o: %.c $(wildcard include/averis/*.h) src/internal.h $(wildcard tests/*.h tests/*.def bench/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/cuda/%.o: cuda/%.cu $(wildcard cuda/*.cuh) $(wildcard include/averis/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# The device checks (run on a GPU by scripts/device_check.sh; CI only builds
# them): tests/cuda (test_cuda), bench/cuda (bench_cuda) and the kernel lab
# dev/cuda (quant_lab), which see cuda/'s internal headers.
CUDA_TEST_BIN = $(BUILD)/test_cuda $(BUILD)/bench_cuda $(BUILD)/quant_lab
cuda-tests: $(CUDA_TEST_BIN)
$(BUILD)/%.o: %.cu $(wildcard cuda/*.cuh dev/cuda/*.cuh tests/cuda/*.cuh include/averis/*.h) tests/check.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -Icuda -c $< -o $@
$(BUILD)/test_cuda: $(BUILD)/tests/cuda/test_cuda.o $(BUILD)/tests/cuda/model_check.o $(BUILD)/tests/test_patterns.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bench_cuda: $(BUILD)/bench/cuda/bench_cuda.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/quant_lab: $(BUILD)/dev/cuda/quant_lab.o $(BUILD)/tests/test_patterns.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(LIB): $(OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(patsubst %.c,$(BUILD)/%.o,$(TOOL_SRC)) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(TEST_BIN): $(patsubst %.c,$(BUILD)/%.o,$(TEST_SRC)) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench_%: $(BUILD)/bench/bench_%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The README's test command: the suite, then the same suite under ASan+UBSan.
test:
	@bash tests/run.sh

# One build flavour, no sanitizer run (tests/run.sh drives both flavours).
test-fast: $(BIN) $(TEST_BIN)
	@$(TEST_BIN) && bash tests/test_cli.sh $(BIN)

# With the CUDA path, the device test and bench binaries are built too (CI
# compiles them; they run on a GPU: scripts/device_check.sh).
build-tests: $(BIN) $(TEST_BIN) $(if $(filter 1,$(CUDA)),$(CUDA_TEST_BIN))

print-build:
	@echo $(BUILD)

bench: $(BENCH_BIN)
	$(BUILD)/bench_quant
	$(BUILD)/bench_qlinear

# The two-command quick start: `make demo` (or bash scripts/demo.sh) then `make test`.
demo:
	@bash scripts/demo.sh

data: $(BIN)
	@bash scripts/get_data.sh data/default

# Regenerate the PyTorch fixtures (needs torch; see tests/fixtures/README.md).
fixtures:
	python3 tests/gen_fixtures.py tests/fixtures/nvfp4

clean:
	rm -rf build build-asan
