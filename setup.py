"""Builds hopscotch_ext._C with torch.utils.cpp_extension (ninja).

CUDA kernels are built when the installed torch has CUDA and nvcc is found; otherwise a CPU-only build.
Environment:
  HOPSCOTCH_BUILD_CUDA=1|0   force the CUDA kernels on or off (default: auto-detect)
  TORCH_CUDA_ARCH_LIST        CUDA archs; defaults to "8.0;9.0" (Ampere + Hopper) when no GPU is visible
  HOPSCOTCH_CPU_ISA=auto|avx2|default
                              CPU vector ISA of the CPU kernels (default auto: AVX2 + FMA + F16C when the build
                              machine has them; the extension is built from source for the machine that runs it)
  MAX_JOBS                    parallel compile jobs (ninja); keep it at 2 on a 2-core machine
  CUDA_HOME                   CUDA toolkit root; defaults to /usr/local/cuda when that exists
"""

import os
import shutil
import sys
from pathlib import Path

# The nvcc on PATH may be a wrapper outside the toolkit, which makes torch guess the wrong CUDA_HOME
# (docs/BUILDING.md). Point at the toolkit root before torch.utils.cpp_extension reads it at import.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
DEFAULT_ARCHS = "8.0;9.0"


def _say(msg: str) -> None:
    print(f"hopscotch build: {msg}", file=sys.stderr)


def _want_cuda() -> tuple[bool, str]:
    forced = os.environ.get("HOPSCOTCH_BUILD_CUDA", "").strip().lower()
    has_torch_cuda = torch.version.cuda is not None
    nvcc = cpp_extension.CUDA_HOME and Path(cpp_extension.CUDA_HOME, "bin", "nvcc").exists()
    if forced in ("0", "false", "no", "off"):
        return False, "HOPSCOTCH_BUILD_CUDA=0"
    if forced in ("1", "true", "yes", "on"):
        if not has_torch_cuda:
            raise RuntimeError("HOPSCOTCH_BUILD_CUDA=1 but the installed torch has no CUDA (torch "
                               f"{torch.__version__}); install a CUDA build of torch, e.g. torch==2.14.1")
        if not nvcc:
            raise RuntimeError("HOPSCOTCH_BUILD_CUDA=1 but nvcc was not found; set CUDA_HOME to the toolkit root")
        return True, "HOPSCOTCH_BUILD_CUDA=1"
    if not has_torch_cuda:
        return False, f"torch {torch.__version__} has no CUDA"
    if not nvcc:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, "auto-detected"


def _cpu_isa_flags() -> list[str]:
    """Compile the CPU kernels for AVX2 when the build machine has it.

    ATen's Vectorized<T> picks its implementation from CPU_CAPABILITY_* macros; without them it falls back to
    scalar loops, and bf16 <-> float conversion becomes element by element (measured here: 3x slower than
    torch's own eager ops). torch itself dispatches at run time; an extension built from source on the machine
    that runs it can simply target that machine's ISA.
    """
    isa = os.environ.get("HOPSCOTCH_CPU_ISA", "auto").strip().lower()
    if isa not in ("auto", "avx2", "default"):
        raise RuntimeError(f"HOPSCOTCH_CPU_ISA={isa!r}; expected auto, avx2 or default")
    if isa == "auto":
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            flags = set()
        isa = "avx2" if {"avx2", "fma", "f16c"} <= flags else "default"
    if isa == "avx2":
        _say("CPU kernels for AVX2 + FMA + F16C")
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    _say("CPU kernels for the baseline ISA (no AVX2 found; slower)")
    return []


def _extension():
    with_cuda, why = _want_cuda()
    sources = [str(p.relative_to(ROOT)) for p in [CSRC / "torch_bindings.cpp", CSRC / "module.cpp",
                                                   *sorted((CSRC / "cpu").glob("*.cpp"))]]
    macros = [("HOPSCOTCH_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx_flags = (["-O3", "-fopenmp"] if sys.platform != "darwin" else ["-O3"]) + _cpu_isa_flags()
    # ATen's CPU vector headers carry `#pragma unroll` (a CUDA pragma), which g++ reports under -Wall for
    # every file that includes them: ~100 lines of noise that hide real warnings.
    cxx_flags.append("-Wno-unknown-pragmas")
    # No implicit FMA: g++ contracts `x1 * c - x2 * s` into one FMA by default (-ffp-contract=fast), which rounds
    # differently from the CUDA kernels (__fmul_rn / __fsub_rn) and the float32 reference. FMAs the kernels mean
    # (at::vec::fmadd, std::fma) stay FMAs. Mirrored in CMakeLists.txt.
    cxx_flags.append("-ffp-contract=off")
    extra = {"cxx": cxx_flags}
    if not with_cuda:
        _say(f"CPU-only build ({why}); CUDA kernels not compiled")
        return cpp_extension.CppExtension("hopscotch_ext._C", sources, define_macros=macros,
                                          extra_compile_args=extra, extra_link_args=["-fopenmp"])
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # With no GPU visible torch's arch detection crashes (docs/BUILDING.md); default to the lent GPUs' archs.
        visible = torch.cuda.is_available() and torch.cuda.device_count() > 0
        if not visible:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "native")
    sources += [str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.cu"))]
    macros += [("HOPSCOTCH_WITH_CUDA", None), ("HOPSCOTCH_CUDA_ARCHS", f'"{archs}"'),
               ("HOPSCOTCH_CUDA_VERSION", f'"{torch.version.cuda}"')]
    extra["nvcc"] = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    _say(f"CUDA build ({why}) for archs {archs}")
    return cpp_extension.CUDAExtension("hopscotch_ext._C", sources, define_macros=macros,
                                       extra_compile_args=extra, extra_link_args=["-fopenmp"])


if shutil.which("ninja") is None:
    _say("ninja not found: falling back to a slow serial build (pip install ninja)")

setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
