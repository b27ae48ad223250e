# Install rules (ATTEND_INSTALL): the headers, the exported target attend::attend and a
# package config, so that an installed attend is found by
#
#   find_package(attend 0.1 REQUIRED)
#   target_link_libraries(app PRIVATE attend::attend)
#
# Model: cmake-init's header-only template and fmt. attend is header-only and compiles
# nothing, so its package is architecture-independent and lives under share/ by default.

include(CMakePackageConfigHelpers)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/attend
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  COMPONENT attend_Development)

install(TARGETS attend EXPORT attendTargets)

# Packagers may prefer lib/cmake/attend; both are on find_package's search path. A STRING,
# not a PATH: CMake would turn a relative PATH given with -D into an absolute one.
set(attend_INSTALL_CMAKEDIR ${CMAKE_INSTALL_DATADIR}/attend
  CACHE STRING "Where the package config files go, relative to the install prefix")
mark_as_advanced(attend_INSTALL_CMAKEDIR)

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/attendConfig.cmake.in
  ${PROJECT_BINARY_DIR}/attendConfig.cmake
  INSTALL_DESTINATION ${attend_INSTALL_CMAKEDIR})

# find_package(attend X.Y) accepts an installed attend of the same major version X that is
# not older than X.Y.
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/attendConfigVersion.cmake
  COMPATIBILITY SameMajorVersion
  ARCH_INDEPENDENT)

install(FILES
    ${PROJECT_BINARY_DIR}/attendConfig.cmake
    ${PROJECT_BINARY_DIR}/attendConfigVersion.cmake
  DESTINATION ${attend_INSTALL_CMAKEDIR}
  COMPONENT attend_Development)

install(EXPORT attendTargets
  NAMESPACE attend::
  DESTINATION ${attend_INSTALL_CMAKEDIR}
  COMPONENT attend_Development)
