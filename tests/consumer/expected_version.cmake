# Hands the CMake project version of attend (ATTEND_EXPECTED_VERSION, X.Y.Z) to main.cpp,
# which compares it with the ATTEND_VERSION_* macros of attend.hpp.
string(REPLACE "." ";" expected_version ${ATTEND_EXPECTED_VERSION})
list(GET expected_version 0 major)
list(GET expected_version 1 minor)
list(GET expected_version 2 patch)
target_compile_definitions(consumer PRIVATE EXPECTED_VERSION_MAJOR=${major}
  EXPECTED_VERSION_MINOR=${minor} EXPECTED_VERSION_PATCH=${patch})
