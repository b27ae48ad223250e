# Cross-compiling attend for 64-bit ARM Linux with Debian's cross toolchain, running the
# test programs under qemu user-mode emulation:
#
#   apt-get install g++-aarch64-linux-gnu qemu-user-static
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
#   cmake --build build/aarch64 && ctest --test-dir build/aarch64
#
# .ci/neon does exactly this. GoogleTest is built from Debian's sources (libgtest-dev ships
# /usr/src/googletest, but compiled libraries for the build machine only); see
# tests/CMakeLists.txt.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(ATTEND_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${ATTEND_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${ATTEND_CROSS_TRIPLE}-g++)

# Libraries, headers and packages come from the target's sysroot only, programs (the
# build's tools) from the build machine.
set(CMAKE_FIND_ROOT_PATH /usr/${ATTEND_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Eigen is headers only, the same for every architecture: the build machine's package
# (Debian's libeigen3-dev) serves the target too.
if(EXISTS /usr/share/eigen3/cmake/Eigen3Config.cmake)
  set(Eigen3_DIR /usr/share/eigen3/cmake CACHE PATH "Eigen3Config.cmake of the build machine")
endif()

# ctest, gtest_discover_tests and add_test run the target's programs through qemu, which
# finds the target's shared libraries (libstdc++, libc) under -L.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static -L /usr/${ATTEND_CROSS_TRIPLE})
