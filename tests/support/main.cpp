// The main of every unit test. ctest runs each test executable once per instruction-set
// path, with ATTEND_ISA naming the path (see tests/CMakeLists.txt): every call that does not
// force a path through its Context then runs that path. On a CPU that cannot run the
// path, every test is skipped rather than failed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "attend/isa.hpp"

namespace {

class PathEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    const char* env = std::getenv("ATTEND_ISA");
    if (!env || !*env) return;
    if (!attend::supported(attend::parse_isa(env)))
      GTEST_SKIP() << "this CPU cannot run the " << env << " path";
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new PathEnvironment);
  return RUN_ALL_TESTS();
}
