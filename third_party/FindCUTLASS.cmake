# Finds CUTLASS/CuTe headers: CUTLASS_DIR (a CUTLASS checkout or its include/ directory) if given,
# else the PyPI package nvidia-cutlass (cutlass_library/source/include). Defines CUTLASS_FOUND and
# CUTLASS_INCLUDE_DIRS.
set(_cutlass_hints "")
if(DEFINED CUTLASS_DIR)
  list(APPEND _cutlass_hints "${CUTLASS_DIR}" "${CUTLASS_DIR}/include")
elseif(DEFINED ENV{CUTLASS_DIR})
  list(APPEND _cutlass_hints "$ENV{CUTLASS_DIR}" "$ENV{CUTLASS_DIR}/include")
endif()
if(NOT Python_EXECUTABLE)
  find_package(Python QUIET COMPONENTS Interpreter)
endif()
if(Python_EXECUTABLE)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))"
    OUTPUT_VARIABLE _cutlass_py OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
  if(_rc EQUAL 0)
    list(APPEND _cutlass_hints "${_cutlass_py}")
  endif()
endif()
find_path(CUTLASS_INCLUDE_DIR cutlass/cutlass.h HINTS ${_cutlass_hints} NO_DEFAULT_PATH)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CUTLASS REQUIRED_VARS CUTLASS_INCLUDE_DIR)
if(CUTLASS_FOUND)
  set(CUTLASS_INCLUDE_DIRS "${CUTLASS_INCLUDE_DIR}")
endif()
