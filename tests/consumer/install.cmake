# cmake -DBUILD_DIR=<attend build tree> -DPREFIX=<dir> [-DCONFIG=<config>] -P install.cmake
#
# Installs the build tree into PREFIX after emptying it, so that the find_package consumer
# sees exactly what this build installs and nothing left over from an earlier run.

file(REMOVE_RECURSE ${PREFIX})
set(config_option)
if(CONFIG)
  set(config_option --config ${CONFIG})
endif()
execute_process(
  COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX} ${config_option}
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} failed: ${result}")
endif()
