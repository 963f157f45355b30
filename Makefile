# averis — FP4 (NVFP4) training in C. `make` builds the library and the
# `averis` binary with no optional dependency; optional ones are detected.
CC      ?= cc
BUILD   ?= build
WERROR  ?= 0
CFLAGS_BASE := -std=c11 -O2 -g -Wall -Wextra -ffp-contract=off -Iinclude -Isrc
ifeq ($(WERROR),1)
CFLAGS_BASE += -Werror
endif
LDLIBS  := -lm -lpthread
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

# cuDNN attention (cuda/cudnn_att.cu): cuDNN 9 (cudnn.h + libcudnn) and the
# header-only cudnn-frontend. cuDNN from CUDNN_HOME= (include/, lib64/ or
# lib/), else the CUDA install, else the Python environment's nvidia/cudnn
# (the nvidia-cudnn-cu* wheel, as torch installs it), else /usr. The frontend
# from CUDNN_FRONTEND_INCLUDE= (the folder of cudnn_frontend.h), else
# .cudnn_fe/include (scripts/carry_cudnn_fe.sh), else the Python environment's
# nvidia-cudnn-frontend (scripts/setup.sh installs it). CUDNN=0 builds the stub.
PYTHON      ?= python3
comma       := ,
ifeq ($(CUDA),1)
PY_SITE     := $(shell $(PYTHON) -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
cudnn_libdir = $(firstword $(foreach d,lib64 lib lib/x86_64-linux-gnu,$(if $(wildcard $(1)/$(d)/libcudnn.so*),$(1)/$(d))))
CUDNN_ROOT  := $(firstword $(foreach c,$(if $(CUDNN_HOME),$(CUDNN_HOME),$(CUDA_HOME) $(addsuffix /nvidia/cudnn,$(PY_SITE)) $(addsuffix /nvidia/cu13,$(PY_SITE)) /usr),\
                 $(if $(and $(wildcard $(c)/include/cudnn_version.h),$(call cudnn_libdir,$(c))),$(c))))
CUDNN_FE_INC := $(firstword $(foreach d,$(if $(CUDNN_FRONTEND_INCLUDE),$(CUDNN_FRONTEND_INCLUDE),$(CURDIR)/.cudnn_fe/include \
                 $(addsuffix /include,$(PY_SITE)) /usr/local/include /usr/include),$(if $(wildcard $(d)/cudnn_frontend.h),$(d))))
ifneq ($(CUDNN_ROOT),)
CUDNN_LIBDIR := $(call cudnn_libdir,$(CUDNN_ROOT))
CUDNN_VER    := $(shell sed -n 's/^\#define CUDNN_\(MAJOR\|MINOR\) *\([0-9]*\).*/\2/p' $(CUDNN_ROOT)/include/cudnn_version.h | paste -sd.)
endif
ifneq ($(CUDNN_FE_INC),)
CUDNN_FE_VER := $(shell sed -n 's/^\#define CUDNN_FRONTEND_\(MAJOR\|MINOR\)_VERSION *\([0-9]*\).*/\2/p' $(CUDNN_FE_INC)/cudnn_frontend_version.h | paste -sd.)
endif
HAVE_CUDNN  := $(if $(and $(CUDNN_ROOT),$(CUDNN_FE_INC),$(filter 9 1%,$(firstword $(subst ., ,$(CUDNN_VER))))),1,0)
CUDNN_WHY   := $(if $(CUDNN_ROOT),$(if $(filter 1,$(HAVE_CUDNN)),cuDNN $(CUDNN_VER) in $(CUDNN_ROOT)$(comma) frontend $(CUDNN_FE_VER) in $(CUDNN_FE_INC),$(if $(CUDNN_FE_INC),cuDNN $(CUDNN_VER) in $(CUDNN_ROOT) is older than 9,no cudnn-frontend headers: bash scripts/setup.sh or CUDNN_FRONTEND_INCLUDE=)),no cudnn.h + libcudnn: set CUDNN_HOME=)
else
HAVE_CUDNN  := 0
CUDNN_WHY   := no CUDA path
endif
CUDNN       ?= $(HAVE_CUDNN)
ifeq ($(CUDNN),1)
CUDNN_SRC   := cuda/cudnn_att.cu
# the pip wheel ships libcudnn.so.9 without the libcudnn.so link
CUDNN_LINK  := $(if $(wildcard $(CUDNN_LIBDIR)/libcudnn.so),-lcudnn,-l:$(notdir $(firstword $(wildcard $(CUDNN_LIBDIR)/libcudnn.so.[0-9]*))))
# nvrtc: the frontend's own (experimental) engines compile kernels at run time
LDLIBS      += -L$(CUDNN_LIBDIR) -Wl,-rpath,$(CUDNN_LIBDIR) $(CUDNN_LINK) -lnvrtc
else
CUDNN_SRC   := cuda/cudnn_att_stub.cu
CUDNN_WHY   := $(if $(filter 1,$(HAVE_CUDNN)),CUDNN=0,$(CUDNN_WHY))
endif

# NCCL (cuda/nccl.cu, data parallel over GPUs): nccl.h + libnccl from
# NCCL_HOME=, else the CUDA install, else the Python environment's
# nvidia/nccl (the nvidia-nccl-cu* wheel), else /usr. NCCL=0 builds the stub.
ifeq ($(CUDA),1)
nccl_libdir = $(firstword $(foreach d,lib64 lib lib/x86_64-linux-gnu,$(if $(wildcard $(1)/$(d)/libnccl.so*),$(1)/$(d))))
NCCL_ROOT   := $(firstword $(foreach c,$(if $(NCCL_HOME),$(NCCL_HOME),$(CUDA_HOME) $(addsuffix /nvidia/nccl,$(PY_SITE)) /usr),\
                 $(if $(and $(wildcard $(c)/include/nccl.h),$(call nccl_libdir,$(c))),$(c))))
HAVE_NCCL   := $(if $(NCCL_ROOT),1,0)
ifneq ($(NCCL_ROOT),)
NCCL_LIBDIR := $(call nccl_libdir,$(NCCL_ROOT))
NCCL_VER    := $(shell sed -n 's/^\#define NCCL_\(MAJOR\|MINOR\|PATCH\) *\([0-9]*\).*/\2/p' $(NCCL_ROOT)/include/nccl.h | paste -sd.)
NCCL_WHY    := NCCL $(NCCL_VER) in $(NCCL_ROOT)
else
NCCL_WHY    := no nccl.h + libnccl: set NCCL_HOME=
endif
else
HAVE_NCCL   := 0
NCCL_WHY    := no CUDA path
endif
NCCL        ?= $(HAVE_NCCL)
ifeq ($(NCCL),1)
NCCL_LINK   := $(if $(wildcard $(NCCL_LIBDIR)/libnccl.so),-lnccl,-l:$(notdir $(firstword $(wildcard $(NCCL_LIBDIR)/libnccl.so.[0-9]*))))
LDLIBS      += -L$(NCCL_LIBDIR) -Wl,-rpath,$(NCCL_LIBDIR) $(NCCL_LINK)
else
NCCL_WHY    := $(if $(filter 1,$(HAVE_NCCL)),NCCL=0,$(NCCL_WHY))
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
LIB_SRC   := src/status.c src/formats.c src/nvfp4.c src/io.c src/quant.c src/gemm.c src/qlinear.c src/json.c src/safetensors.c src/model.c src/moe.c src/tokenizer.c src/data.c src/ckpt.c src/backend_cpu.c src/backend_cuda.c src/train.c src/analysis.c src/cuda_opts.c src/comm_cpu.c src/dp.c src/train_dp.c
SIMD_SRC  := src/nvfp4_avx2.c src/nvfp4_avx512.c
TOOL_SRC  := tools/averis.c tools/cli.c tools/cmd_quant.c tools/cmd_prepare.c tools/cmd_train.c tools/cmd_sample.c tools/cmd_analyze.c tools/dp_launch.c tools/cmd_tokenize.c tools/cmd_evaltask.c
TEST_SRC  := $(wildcard tests/test_*.c)
CUDA_SRC  := cuda/profile.cu cuda/quant.cu cuda/quant_fused.cu cuda/qlinear.cu cuda/qlinear_group.cu cuda/grouped_gemm.cu cuda/flash.cu cuda/attention.cu cuda/model.cu cuda/moe.cu cuda/analysis.cu
CUDA_SRC  += $(CUDNN_SRC)
CUDA_SRC  += cuda/dp.cu
OBJ       = $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC) $(SIMD_SRC))
ifeq ($(CUDA),1)
OBJ      += $(patsubst %.cu,$(BUILD)/%.o,$(CUDA_SRC))
else
OBJ      += $(BUILD)/src/cuda_stub.o
endif
ifeq ($(and $(filter 1,$(CUDA)),$(filter 1,$(NCCL))),1)
OBJ      += $(BUILD)/cuda/nccl.o
$(BUILD)/cuda/nccl.o: NVCCFLAGS += $(if $(filter-out /usr $(CUDA_HOME),$(NCCL_ROOT)),-isystem $(NCCL_ROOT)/include)
else
OBJ      += $(BUILD)/src/comm_nccl_stub.o
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
	@echo "  $(call yesno,$(and $(filter 1,$(CUDA)),$(filter 1,$(CUDNN)))) cuDNN attention ($(CUDNN_WHY))"
	@echo "  $(call yesno,$(and $(filter 1,$(CUDA)),$(filter 1,$(NCCL)))) NCCL data parallel, --gpus ($(NCCL_WHY))"

$(BUILD)/src/gemm.o $(BUILD)/src/model.o $(BUILD)/src/moe.o: ALL_CFLAGS += -O3
$(BUILD)/src/nvfp4_avx2.o: ALL_CFLAGS += -mavx2
$(BUILD)/src/nvfp4_avx512.o: ALL_CFLAGS += -mavx512f -mavx512bw -mavx512vl -mavx512dq

$(BUILD)/%.o: %.c $(wildcard include/averis/*.h) src/internal.h src/model_math.h $(wildcard tests/*.h tests/*.def bench/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/cuda/%.o: cuda/%.cu $(wildcard cuda/*.cuh) $(wildcard include/averis/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# The device checks (run on a GPU by scripts/device_check.sh; CI only builds
# them): tests/cuda (test_cuda), bench/cuda (bench_cuda) and the kernel lab
# dev/cuda (quant_lab), which see cuda/'s internal headers.
CUDA_TEST_BIN = $(BUILD)/test_cuda $(BUILD)/bench_cuda $(BUILD)/quant_lab
CUDA_TEST_BIN += $(BUILD)/test_cudnn_att $(BUILD)/test_analysis_gpu $(BUILD)/bench_analysis
cuda-tests: $(CUDA_TEST_BIN)
$(BUILD)/%.o: %.cu $(wildcard cuda/*.cuh dev/cuda/*.cuh tests/cuda/*.cuh include/averis/*.h) tests/check.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -Icuda -c $< -o $@
$(BUILD)/test_cuda: $(BUILD)/tests/cuda/test_cuda.o $(BUILD)/tests/cuda/model_check.o $(BUILD)/tests/cuda/fused_check.o \
                    $(BUILD)/tests/cuda/grouped_gemm_check.o $(BUILD)/tests/cuda/dp_check.o $(BUILD)/tests/test_patterns.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bench_cuda: $(BUILD)/bench/cuda/bench_cuda.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/quant_lab: $(BUILD)/dev/cuda/quant_lab.o $(BUILD)/tests/test_patterns.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
# the GPU mean-bias analysis against the CPU's (issue 24), and its cost in training
$(BUILD)/test_analysis_gpu: $(BUILD)/tests/cuda/test_analysis_gpu.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bench_analysis: $(BUILD)/bench/cuda/bench_analysis.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
# cuDNN attention against the fp64 reference; `test_cudnn_att bench` times it
$(BUILD)/test_cudnn_att: $(BUILD)/tests/cuda/test_cudnn_att.o $(BUILD)/tests/test_patterns.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tests/cuda/test_cudnn_att.o: tests/cuda/test_cudnn_att.cu cuda/cudnn_att.cuh cuda/common.cuh dev/cuda/tool_util.cuh tests/check.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -Icuda -c $< -o $@
# The frontend's headers are system headers (their warnings are not ours);
# -O1 without -g: the file is host code that builds graphs once, and the
# frontend's templates take minutes to compile at -O3 -g.
$(BUILD)/cuda/cudnn_att.o: NVCCFLAGS := $(filter-out -O3 -g -lineinfo,$(NVCCFLAGS)) -O1 -isystem $(CUDNN_FE_INC) \
                                        $(if $(filter-out /usr $(CUDA_HOME),$(CUDNN_ROOT)),-isystem $(CUDNN_ROOT)/include)

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
