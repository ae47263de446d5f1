# Finds the torch of the running Python without find_package(Torch): its CMake config drags in
# Caffe2/cuDNN/CUDA probing we do not need. Defines the interface targets torch_from_python and
# (when torch has CUDA) torch_cuda_from_python, plus TORCH_CUDA_VERSION ("" for CPU torch).
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "
import os, torch
from torch.utils import cpp_extension as c
print(','.join(c.include_paths()))
print(os.path.join(os.path.dirname(torch.__file__), 'lib'))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda or '')
print(torch.__version__)"
  OUTPUT_VARIABLE _torch_out RESULT_VARIABLE _torch_rc ERROR_VARIABLE _torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "sparseops needs torch installed in ${Python_EXECUTABLE} before it builds "
                      "(pip install torch==2.13.0, then pip install --no-build-isolation .):\n${_torch_err}")
endif()
string(REPLACE "\n" ";" _torch_lines "${_torch_out}")
list(GET _torch_lines 0 _torch_inc)
list(GET _torch_lines 1 TORCH_LIB_DIR)
list(GET _torch_lines 2 _torch_abi)
list(LENGTH _torch_lines _n)
set(TORCH_CUDA_VERSION "")
if(_n EQUAL 5)
  list(GET _torch_lines 3 TORCH_CUDA_VERSION)
  list(GET _torch_lines 4 TORCH_VERSION)
else()
  list(GET _torch_lines 3 TORCH_VERSION)
endif()
string(REPLACE "," ";" _torch_inc "${_torch_inc}")
message(STATUS "sparseops: torch ${TORCH_VERSION} (CUDA: '${TORCH_CUDA_VERSION}') at ${TORCH_LIB_DIR}")

add_library(torch_from_python INTERFACE)
target_include_directories(torch_from_python SYSTEM INTERFACE ${_torch_inc})
target_compile_definitions(torch_from_python INTERFACE _GLIBCXX_USE_CXX11_ABI=${_torch_abi}
                           TORCH_EXTENSION_NAME=_C)
target_link_directories(torch_from_python INTERFACE "${TORCH_LIB_DIR}")
target_link_libraries(torch_from_python INTERFACE c10 torch_cpu)
if(TORCH_CUDA_VERSION)
  find_package(CUDAToolkit)
  add_library(torch_cuda_from_python INTERFACE)
  target_link_libraries(torch_cuda_from_python INTERFACE c10_cuda torch_cuda)
  if(CUDAToolkit_FOUND)
    target_link_libraries(torch_cuda_from_python INTERFACE CUDA::cudart)
  endif()
endif()
