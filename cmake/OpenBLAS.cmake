# OpenBLAS is loaded at run time (kernels/cpu/blas.cc dlopens it, so it can
# pick AVX-512 kernels before OpenBLAS initialises); CMake only finds it, for
# its headers-free path. Debian's OpenBLASConfig.cmake sets variables only.
find_package(OpenBLAS CONFIG QUIET)
if(OpenBLAS_FOUND AND OpenBLAS_LIBRARIES)
  set(_openblas_lib ${OpenBLAS_LIBRARIES})
else()
  find_library(_openblas_lib NAMES openblas PATH_SUFFIXES openblas-pthread REQUIRED)
endif()
list(GET _openblas_lib 0 _openblas_lib)
get_filename_component(_openblas_dir "${_openblas_lib}" DIRECTORY)
# Prefer the run-time soname (present without the -dev package).
if(EXISTS "${_openblas_dir}/libopenblas.so.0")
  set(LLAMAPRO_OPENBLAS_PATH "${_openblas_dir}/libopenblas.so.0")
else()
  set(LLAMAPRO_OPENBLAS_PATH "${_openblas_lib}")
endif()
string(REPLACE "//" "/" LLAMAPRO_OPENBLAS_PATH "${LLAMAPRO_OPENBLAS_PATH}")
message(STATUS "llamapro: OpenBLAS ${LLAMAPRO_OPENBLAS_PATH} (loaded at run time)")

# oneDNN (preferred when installed; kernels/cpu/blas.h says why).
find_library(_dnnl_lib NAMES dnnl)
set(LLAMAPRO_DNNL_PATH "")
if(_dnnl_lib)
  get_filename_component(_dnnl_dir "${_dnnl_lib}" DIRECTORY)
  if(EXISTS "${_dnnl_dir}/libdnnl.so.2")
    set(LLAMAPRO_DNNL_PATH "${_dnnl_dir}/libdnnl.so.2")
  else()
    set(LLAMAPRO_DNNL_PATH "${_dnnl_lib}")
  endif()
  message(STATUS "llamapro: oneDNN ${LLAMAPRO_DNNL_PATH} (loaded at run time, preferred)")
endif()
