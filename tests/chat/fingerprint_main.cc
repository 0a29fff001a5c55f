// Prints the fingerprint and the recognized name of chat template files:
//   bazel run //tests/chat:chat_template_fingerprint -- FILE...
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "chat/chat_template.h"

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "%s: cannot open\n", argv[i]);
      return 1;
    }
    std::stringstream text;
    text << in.rdbuf();
    const auto name = moeflow::chat::IdentifyChatTemplate(text.str());
    std::printf("%s  %s  %s\n", moeflow::chat::ChatTemplateFingerprint(text.str()).c_str(),
                name.ok() ? name->c_str() : "(unknown)", argv[i]);
  }
  return 0;
}
