// The main of every unit test. ctest runs each test executable once per instruction-set
// path, with ATTEND_ISA naming the path (see tests/CMakeLists.txt): every call that does not
// force a path through its Context then runs that path. On a CPU that cannot run the
// path, every test is skipped rather than failed.
//
// An argument --entry=<name> (after GoogleTest's own) sets ATTEND_TEST_ENTRY=<name> for
// tests that can run more than one entry point (test_attention: --entry=with_probs).
// ctest passes it as an argument because gtest_discover_tests's PROPERTIES keeps only the
// first element of a list, so ENVIRONMENT cannot hold a second variable there.
#include <gtest/gtest.h>

#include <cstdio>
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
  const std::string entry = "--entry=";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(entry, 0) != 0) {
      std::fprintf(stderr, "%s: unknown argument %s (expected --entry=<name>)\n", argv[0],
                   arg.c_str());
      return 2;
    }
    setenv("ATTEND_TEST_ENTRY", arg.substr(entry.size()).c_str(), 1);
  }
  ::testing::AddGlobalTestEnvironment(new PathEnvironment);
  return RUN_ALL_TESTS();
}
