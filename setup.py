"""setup.py — builds the extension module averis._core for `pip install .`.

Two ways, chosen by the environment:

* default (CPU): setuptools compiles the C library (every src/**/*.c) into
  the extension with the Makefile's numeric flags (-std=c11 -O2
  -ffp-contract=off: the bits depend on it). OpenMP, the AVX2/AVX-512
  kernels (their files get their -m flags), OpenBLAS and zlib are probed
  with the compiler and used where present, as the Makefile does.
* AVERIS_CUDA=1 with nvcc on PATH: `make` builds the library with the CUDA
  path (position-independent, in build/python-cuda) and the extension links
  that archive and the Makefile's link flags; the module then also runs on
  torch CUDA tensors through our kernels.
"""
from __future__ import annotations

import concurrent.futures
import glob
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
NUMERIC_FLAGS = ["-std=c11", "-O2", "-ffp-contract=off"]
AVX2_FLAGS = ["-mavx2"]
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
CUDA_BUILD = "build/python-cuda"


def rel(path: str) -> str:
    """path relative to the repository root (setuptools wants relative sources)."""
    return os.path.relpath(path, ROOT)


def c_compiler() -> list[str]:
    """The C compiler Python's build uses (CC overrides), as an argv prefix."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def probe(flags: list[str], program: str) -> bool:
    """True if `program` compiles and links with `flags` (the Makefile's probe)."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "probe.c")
        with open(src, "w") as f:
            f.write(program)
        cmd = c_compiler() + [src, "-o", os.path.join(d, "a.out")] + flags
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def cpu_features() -> tuple[list[str], list[str], list[str]]:
    """(compile flags, link flags, macros) for the optional CPU features found."""
    cflags, ldflags, macros = [], [], []
    if probe(["-fopenmp"], "int main(void){return 0;}\n"):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    if probe(AVX512_FLAGS, "#include <immintrin.h>\nint main(void){__m512 v=_mm512_setzero_ps();(void)v;return 0;}\n"):
        macros.append("AVERIS_HAVE_X86")
    if probe(["-lopenblas"], "#include <cblas.h>\nint main(void){cblas_sgemm(CblasRowMajor,CblasNoTrans,"
             "CblasNoTrans,0,0,0,0,0,0,0,0,0,0,0);return 0;}\n"):
        macros.append("AVERIS_HAVE_BLAS")
        ldflags.append("-lopenblas")
    if probe(["-lz"], "#include <zlib.h>\nint main(void){return inflateInit((z_stream*)0);}\n"):
        macros.append("AVERIS_HAVE_ZLIB")
        ldflags.append("-lz")
    return cflags, ldflags, macros


def want_cuda() -> bool:
    """AVERIS_CUDA=1 asks for the CUDA path; it needs nvcc (NVCC or PATH)."""
    if os.environ.get("AVERIS_CUDA", "0") != "1":
        return False
    nvcc = os.environ.get("NVCC", "nvcc")
    if shutil.which(nvcc) is None:
        raise RuntimeError(f"AVERIS_CUDA=1 but {nvcc!r} is not on PATH")
    return True


def make_cuda_library() -> tuple[str, list[str]]:
    """Runs make for the library with CUDA, position-independent, and returns
    (archive, link flags) — the link flags read from the Makefile itself."""
    jobs = str(os.cpu_count() or 2)
    env = dict(os.environ, NVCC_APPEND_FLAGS=(os.environ.get("NVCC_APPEND_FLAGS", "") + " -Xcompiler -fPIC").strip())
    args = ["make", "-s", "--no-print-directory", "-C", ROOT, f"BUILD={CUDA_BUILD}", "CUDA=1", "CFLAGS=-fPIC"]
    subprocess.run(args + ["-j", jobs, f"{CUDA_BUILD}/libaveris.a"], check=True, env=env)
    out = subprocess.run(args + ["--eval", "averis-py-ldflags: ; @echo $(LDFLAGS) $(LDLIBS)", "averis-py-ldflags"],
                         check=True, env=env, capture_output=True, text=True).stdout
    return os.path.join(CUDA_BUILD, "libaveris.a"), shlex.split(out)


def configure(ext: Extension) -> dict[str, list[str]]:
    """Fills in the sources and flags of ext for this machine (CPU or CUDA
    build); returns the library sources to compile, each with its extra
    flags (none in the CUDA build: the archive from make has them)."""
    ext.include_dirs = ["include", "src"]
    werror = ["-Werror"] if os.environ.get("WERROR") == "1" else []  # as the Makefile's WERROR=1
    ext.extra_compile_args = NUMERIC_FLAGS + ["-Wall", "-Wextra"] + werror
    if want_cuda():
        archive, ldflags = make_cuda_library()
        ext.define_macros = [("AVERIS_PY_CUDA", "1")]
        ext.extra_objects = [archive]
        ext.extra_link_args = ldflags
        return {}
    fcflags, ldflags, macros = cpu_features()
    per_file: dict[str, list[str]] = {}
    for src in sorted(glob.glob(os.path.join(ROOT, "src", "**", "*.c"), recursive=True)):
        name, simd = os.path.basename(src), "AVERIS_HAVE_X86" in macros
        per_file[rel(src)] = (AVX512_FLAGS if simd and "avx512" in name else
                              AVX2_FLAGS if simd and "avx2" in name else [])
    ext.define_macros = [(m, None) for m in macros]
    ext.extra_compile_args += fcflags
    ext.extra_link_args = ldflags + ["-lm", "-lpthread"]
    return per_file


class BuildExt(build_ext):
    """build_ext that configures the extension when it is built (not when
    pip only asks for metadata) and compiles the library sources in parallel,
    each with its own extra flags (-mavx2 / -mavx512* for the SIMD files, as
    the Makefile does), before the module itself."""

    def build_extension(self, ext: Extension) -> None:
        per_file = configure(ext)

        def compile_one(item: tuple[str, list[str]]) -> list[str]:
            src, flags = item
            return self.compiler.compile([src], output_dir=self.build_temp, macros=ext.define_macros,
                                         include_dirs=ext.include_dirs,
                                         extra_postargs=ext.extra_compile_args + flags)

        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            objects = [o for objs in pool.map(compile_one, per_file.items()) for o in objs]
        ext.extra_objects = objects + list(ext.extra_objects or [])
        super().build_extension(ext)


setup(
    ext_modules=[Extension("averis._core", ["python/averis/_core.c"])],
    cmdclass={"build_ext": BuildExt},
    # build/ is the Makefile's; setuptools' intermediate files go below it.
    options={"build": {"build_base": "build/python"}},
)
