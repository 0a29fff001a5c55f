#!/usr/bin/env node
// Encodes a corpus with llama.cpp's tokenizer (through node-llama-cpp's
// prebuilt CPU binary; only the vocabulary of the GGUF file is loaded).
//
// Usage: node llamacpp_encode.mjs NODE_MODULES MODEL.gguf CORPUS.json OUT.json
// OUT.json: {"peer": "...", "ids": [[id, ...], ...]}: no BOS, special tokens
// parsed in the text (llama_tokenize with add_special false, parse_special true).
import fs from 'fs';
import path from 'path';
import {createRequire} from 'module';

const [nodeModules, modelPath, corpusPath, outPath] = process.argv.slice(2);
if (!outPath) {
  process.stderr.write('usage: node llamacpp_encode.mjs NODE_MODULES MODEL.gguf CORPUS.json OUT.json\n');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(nodeModules), 'x.js'));
const {getLlama} = await import(require.resolve('node-llama-cpp'));
const version = JSON.parse(
    fs.readFileSync(path.join(path.resolve(nodeModules), 'node-llama-cpp', 'package.json'))).version;

const llama = await getLlama({gpu: false, build: 'never'});
const model = await llama.loadModel({modelPath, gpuLayers: 0, vocabOnly: true});
const corpus = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));
const ids = corpus.map((s) => Array.from(model.tokenize(s, /*specialTokens=*/true)));
fs.writeFileSync(outPath, JSON.stringify({peer: `llama.cpp (node-llama-cpp@${version})`, ids}));
await llama.dispose();
