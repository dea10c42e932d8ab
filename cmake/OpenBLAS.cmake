# Debian's OpenBLASConfig.cmake only sets variables; wrap them in a target.
# cblas.h lives in the openblas-pthread include directory.
find_package(OpenBLAS CONFIG QUIET)
if(OpenBLAS_FOUND AND OpenBLAS_LIBRARIES)
  set(_openblas_libs ${OpenBLAS_LIBRARIES})
  set(_openblas_incs ${OpenBLAS_INCLUDE_DIRS})
else()
  find_library(_openblas_libs NAMES openblas REQUIRED)
  find_path(_openblas_incs cblas.h PATH_SUFFIXES openblas-pthread openblas REQUIRED)
endif()
find_path(_cblas_dir cblas.h HINTS ${_openblas_incs} PATH_SUFFIXES openblas-pthread openblas
          PATHS /usr/include/x86_64-linux-gnu /usr/include REQUIRED)
add_library(llamapro_openblas INTERFACE)
target_link_libraries(llamapro_openblas INTERFACE ${_openblas_libs})
target_include_directories(llamapro_openblas SYSTEM INTERFACE ${_cblas_dir})
message(STATUS "llamapro: OpenBLAS ${_openblas_libs}, cblas.h in ${_cblas_dir}")
