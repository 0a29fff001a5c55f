// coordinator/bearer_auth: token files (trimmed, length and character
// checks, precise errors), random tokens, loopback detection of listen
// addresses.
#include "auth/bearer_auth.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace moeflow::dataflow {
namespace {

std::string TokenFile(const std::string& name, const std::string& text) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", getpid(), "_", name);
  std::ofstream(path) << text;
  return path;
}

TEST(BearerAuthTest, ReadsTheFirstLineTrimmed) {
  auto t = ReadTokenFile(TokenFile("ok", "  s3cret-token-1\nsecond line\n"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "s3cret-token-1");
}

TEST(BearerAuthTest, RejectsBadTokenFiles) {
  auto missing = ReadTokenFile("/nonexistent/token");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/token: cannot read"), std::string::npos);
  auto empty = ReadTokenFile(TokenFile("empty", "\n"));
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("the token file is empty"), std::string::npos);
  auto short_token = ReadTokenFile(TokenFile("short", "1234567\n"));
  EXPECT_NE(short_token.status().message().find("8 to 4096 characters (has 7)"),
            std::string::npos);
  auto spaced = ReadTokenFile(TokenFile("spaced", "two words here\n"));
  EXPECT_NE(spaced.status().message().find("printable ASCII characters only, no spaces"),
            std::string::npos);
  EXPECT_FALSE(ValidateToken(std::string("ok-token\x01", 9), "env").ok());
  EXPECT_TRUE(ValidateToken("12345678", "env").ok());
}

TEST(BearerAuthTest, RandomTokensAre32HexDigitsAndDiffer) {
  auto a = NewRandomToken();
  auto b = NewRandomToken();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 32u);
  EXPECT_EQ(a->find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(*a, *b);
  EXPECT_TRUE(ValidateToken(*a, "random").ok());
}

TEST(BearerAuthTest, LoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:0"));
  EXPECT_TRUE(IsLoopbackAddress("127.1.2.3:50051"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:7000"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:7000"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:0"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:7000"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.2:50070"));
  EXPECT_FALSE(IsLoopbackAddress("box2:50070"));
}

}  // namespace
}  // namespace moeflow::dataflow
