# Cross build for 64-bit ARM Linux with Debian/Ubuntu's g++-aarch64-linux-gnu; run the result with
# qemu-user (use -DSPARSEOPS_STATIC=ON, or qemu-aarch64 -L /usr/aarch64-linux-gnu for a dynamic one).
#   cmake -S . -B build-aarch64 -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
#         -DSPARSEOPS_BUILD_EXTENSION=OFF -DSPARSEOPS_BUILD_TESTS=ON -DSPARSEOPS_BUILD_BENCH=ON -DSPARSEOPS_STATIC=ON
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(SPARSEOPS_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "Prefix of the cross compiler's executables")
set(CMAKE_C_COMPILER "${SPARSEOPS_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${SPARSEOPS_CROSS_PREFIX}g++")

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Lets ctest run the binaries on an x86 host.
find_program(SPARSEOPS_QEMU_AARCH64 qemu-aarch64)
if(SPARSEOPS_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${SPARSEOPS_QEMU_AARCH64};-L;/usr/aarch64-linux-gnu")
endif()
