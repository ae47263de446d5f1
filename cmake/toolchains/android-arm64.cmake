# Android arm64-v8a build with the NDK's own toolchain file: static C++ runtime, API level 24.
# UNTESTED in this repository's CI (no NDK on the build machine); it only forwards the settings below.
#   export ANDROID_NDK=/path/to/android-ndk-r27
#   cmake -S . -B build-android -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/android-arm64.cmake \
#         -DSPARSEOPS_BUILD_EXTENSION=OFF -DSPARSEOPS_BUILD_BENCH=ON -DSPARSEOPS_BUILD_TESTS=ON -DSPARSEOPS_STATIC=ON
if(NOT ANDROID_NDK)
  if(DEFINED ENV{ANDROID_NDK})
    set(ANDROID_NDK "$ENV{ANDROID_NDK}")
  elseif(DEFINED ENV{ANDROID_NDK_HOME})
    set(ANDROID_NDK "$ENV{ANDROID_NDK_HOME}")
  endif()
endif()
if(NOT ANDROID_NDK OR NOT EXISTS "${ANDROID_NDK}/build/cmake/android.toolchain.cmake")
  message(FATAL_ERROR "android-arm64.cmake: set ANDROID_NDK to an NDK (r23 or newer) holding "
                      "build/cmake/android.toolchain.cmake")
endif()
# try_compile projects re-read this file; hand them the NDK path too.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES ANDROID_NDK)
set(ANDROID_ABI "arm64-v8a" CACHE STRING "")
set(ANDROID_PLATFORM "android-24" CACHE STRING "")
set(ANDROID_STL "c++_static" CACHE STRING "")
include("${ANDROID_NDK}/build/cmake/android.toolchain.cmake")
