// The hopscotch_ext._C Python module: build and runtime information. The tensor ops are not bound here;
// they register with TORCH_LIBRARY (torch_bindings.cpp) so that torch.ops and torch.compile see them.
#include <pybind11/pybind11.h>

#ifdef HOPSCOTCH_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#ifndef HOPSCOTCH_TORCH_VERSION
#define HOPSCOTCH_TORCH_VERSION "unknown"
#endif
#ifndef HOPSCOTCH_CUDA_ARCHS
#define HOPSCOTCH_CUDA_ARCHS ""
#endif
#ifndef HOPSCOTCH_CUDA_VERSION
#define HOPSCOTCH_CUDA_VERSION ""
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict d;
  d["torch_version"] = HOPSCOTCH_TORCH_VERSION;
  py::list backends;
  backends.append("cpu");
#ifdef HOPSCOTCH_WITH_CUDA
  backends.append("cuda");
#endif
  d["backends"] = backends;
  d["cuda_archs"] = HOPSCOTCH_CUDA_ARCHS;
  d["cuda_version"] = HOPSCOTCH_CUDA_VERSION;
#ifdef __VERSION__
  d["compiler"] = __VERSION__;
#endif
  return d;
}

int cuda_device_count() {
#ifdef HOPSCOTCH_WITH_CUDA
  try {
    return static_cast<int>(c10::cuda::device_count());
  } catch (...) {
    return 0;
  }
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hopscotch_ext compiled kernels: build and runtime information (ops live in torch.ops.hopscotch_ext)";
  m.def("build_info", &build_info, "Torch version built against, compiled backends, CUDA archs and version.");
  m.def("cuda_device_count", &cuda_device_count, "CUDA devices visible at run time (0 in a CPU-only build).");
}
