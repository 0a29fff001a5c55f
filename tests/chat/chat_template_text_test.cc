#include "chat/chat_template_text.h"

#include <fstream>
#include <sstream>
#include <string>

#include "chat/chat_template.h"
#include "gtest/gtest.h"

namespace moeflow::chat {
namespace {

TEST(ChatTemplateTextTest, DeepseekV3TextIsTheFixtureByteForByte) {
  std::ifstream in("tests/chat/templates/deepseek-v3.jinja", std::ios::binary);
  ASSERT_TRUE(in.good());
  std::stringstream buffer;
  buffer << in.rdbuf();
  EXPECT_EQ(std::string(DeepseekV3ChatTemplateText()), buffer.str());
}

TEST(ChatTemplateTextTest, DeepseekV3TextIsRecognized) {
  auto name = IdentifyChatTemplate(DeepseekV3ChatTemplateText());
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(*name, "deepseek-v3");
}

}  // namespace
}  // namespace moeflow::chat
