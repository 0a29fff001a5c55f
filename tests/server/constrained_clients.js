// Constrained output and logit_bias (issue 19) against a running `moeflow
// serve` on the tiny-v3 fixture (random weights: without a grammar its text
// is anything), with the official `openai` and `ollama` npm packages:
//   node constrained_clients.js NODE_MODULES PORT MODEL_NAME
// response_format json_object / json_schema (plain and streamed, chat and
// completions), Ollama format "json" / a schema (chat and generate): the
// output parses and matches the schema, keys in the schema's order; the
// precise 400s for bad formats, schemas and logit_bias; logit_bias's effect
// on its own, and under a grammar (the grammar wins). One "ok"/"FAIL" line
// per check; exits 1 when one failed; stops itself after 240 s.
'use strict';
const path = require('path');
const [nodeModules, port, modelName] = process.argv.slice(2);
const OpenAI = require(path.join(nodeModules, 'openai')).default;
const {Ollama} = require(path.join(nodeModules, 'ollama'));

const {check, attempt, limit, failed} = require('./checks.js');

limit('constrained_clients.js', 240);
function parses(text) {
  try { return {ok: true, value: JSON.parse(text)}; } catch (e) { return {ok: false}; }
}
async function status400(fn) {
  try { await fn(); } catch (e) { return {status: e.status || e.status_code, error: e}; }
  return {status: 200};
}

const openai = new OpenAI({baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused',
                           timeout: 60000, maxRetries: 0});
const ollama = new Ollama({host: `http://127.0.0.1:${port}`});
const messages = [{role: 'user', content: 'Describe a person as JSON.'}];

// Bounded output (every value and the whitespace between them are), so
// the document always ends within max_tokens.
const schema = {type: 'object', properties: {
  zeta: {type: 'boolean'}, color: {enum: ['red', 'green']},
  count: {type: 'integer', minimum: 0, maximum: 99}, nothing: {type: 'null'}},
  required: ['zeta', 'color', 'count', 'nothing'], additionalProperties: false};
function matchesSchema(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) &&
      JSON.stringify(Object.keys(v)) === JSON.stringify(['zeta', 'color', 'count', 'nothing']) &&
      typeof v.zeta === 'boolean' && ['red', 'green'].includes(v.color) &&
      Number.isInteger(v.count) && v.count >= 0 && v.count <= 99 && v.nothing === null;
}
const jsonSchemaFormat = {type: 'json_schema', json_schema: {name: 'person', strict: true, schema}};

async function main() {
  await attempt('openai: json_object', async () => {
    const r = await openai.chat.completions.create({
      model: modelName, messages, max_tokens: 300, temperature: 0,
      response_format: {type: 'json_object'}});
    const c = r.choices[0];
    const p = parses(c.message.content);
    check(c.finish_reason === 'stop' && p.ok && typeof p.value === 'object' &&
              !Array.isArray(p.value),
          `openai: json_object gives a JSON object (${JSON.stringify(c.message.content)})`);
    let stopped = 0, good = 0;
    for (let seed = 1; seed <= 6; seed++) {
      const s = await openai.chat.completions.create({
        model: modelName, messages, max_tokens: 300, temperature: 1, seed,
        response_format: {type: 'json_object'}});
      if (s.choices[0].finish_reason === 'stop') {
        stopped++;
        const q = parses(s.choices[0].message.content);
        if (q.ok && typeof q.value === 'object') good++;
        else console.log(`  seed ${seed}: ${JSON.stringify(s.choices[0].message.content)}`);
      }
    }
    check(stopped > 0 && good === stopped,
          `openai: json_object at temperature 1: every one that stopped parses (${good}/${stopped} ` +
              'of 6 seeds)');
  });
  await attempt('openai: json_schema', async () => {
    for (const temperature of [0, 1]) {
      const r = await openai.chat.completions.create({
        model: modelName, messages, max_tokens: 400, temperature, seed: 5,
        response_format: jsonSchemaFormat});
      const c = r.choices[0];
      const p = parses(c.message.content);
      check(c.finish_reason === 'stop' && p.ok && matchesSchema(p.value),
            `openai: json_schema at temperature ${temperature} matches the schema, keys in its ` +
                `order (${JSON.stringify(c.message.content)})`);
    }
    const several = await openai.chat.completions.create({
      model: modelName, messages, max_tokens: 400, temperature: 1, seed: 21, n: 3,
      response_format: jsonSchemaFormat});
    check(several.choices.length === 3 &&
              several.choices.every((c) => c.finish_reason === 'stop' &&
                                           parses(c.message.content).ok &&
                                           matchesSchema(parses(c.message.content).value)),
          `openai: json_schema with n = 3: every choice matches ` +
              `(${JSON.stringify(several.choices.map((c) => c.message.content.replace(/\s+/g, '')))})`);
    const stream = await openai.chat.completions.create({
      model: modelName, messages, max_tokens: 400, temperature: 1, seed: 9, stream: true,
      response_format: jsonSchemaFormat});
    let text = '', finish = null;
    for await (const chunk of stream) {
      if (!chunk.choices.length) continue;
      text += chunk.choices[0].delta.content || '';
      finish = chunk.choices[0].finish_reason || finish;
    }
    const p = parses(text);
    check(finish === 'stop' && p.ok && matchesSchema(p.value),
          `openai: json_schema streamed: the deltas make a matching document (${JSON.stringify(text)})`);
    const completion = await openai.completions.create({
      model: modelName, prompt: 'A person: ', max_tokens: 400, temperature: 0,
      response_format: jsonSchemaFormat});
    const q = parses(completion.choices[0].text);
    check(q.ok && matchesSchema(q.value), '/v1/completions takes response_format too');
  });
  await attempt('openai: 400s', async () => {
    const bad = [
      [{response_format: {type: 'xml'}}, 'response_format.type', /'xml' is not one of/],
      [{response_format: {type: 'json_schema'}}, 'response_format.json_schema', /Missing/],
      [{response_format: {type: 'json_schema', json_schema: {name: 'p', schema: {
         type: 'object', properties: {age: {type: 'integer', minimum: 'ten'}}}}}},
       'response_format.json_schema.schema', /#\/properties\/age: minimum must be a number/],
      [{response_format: {type: 'json_schema', json_schema: {name: 'p', schema: {
         type: 'object', properties: {a: {$ref: '#/$defs/missing'}}}}}},
       'response_format.json_schema.schema', /#\/properties\/a/],
      [{logit_bias: {'999999': 1}}, 'logit_bias', /not a token id of this model/],
      [{logit_bias: {'abc': 1}}, 'logit_bias', /'abc' is not a token id/],
      [{logit_bias: {'12': 101}}, 'logit_bias.12', /between -100 and 100/],
      [{logit_bias: [1, 2]}, 'logit_bias', /expected an object/],
    ];
    for (const [extra, param, message] of bad) {
      const r = await status400(() => openai.chat.completions.create(
          {model: modelName, messages, max_tokens: 4, ...extra}));
      const e = r.error || {};
      check(r.status === 400 && e.param === param && message.test(e.message || ''),
            `openai: ${JSON.stringify(extra)}: 400 param ${e.param}: ${e.message}`);
    }
  });
  await attempt('openai: logit_bias', async () => {
    const base = {model: modelName, prompt: 'Once upon a time', max_tokens: 4, temperature: 0,
                  logprobs: 0};
    const plain = await openai.completions.create(base);
    // A token whose text cannot start a JSON object, pushed up by +100.
    let id = 300, piece = '';
    for (; id < 340; id++) {
      const one = await openai.completions.create({...base, max_tokens: 1,
                                                   logit_bias: {[id]: 100}});
      piece = one.choices[0].logprobs.tokens[0];
      if (piece.trim().length > 0 && !piece.trimStart().startsWith('{')) break;
    }
    check(id < 340, `openai: token ${id} is ${JSON.stringify(piece)}`);
    const biased = await openai.completions.create({...base, logit_bias: {[id]: 100}});
    const tokens = biased.choices[0].logprobs.tokens;
    check(tokens.length === 4 && tokens.every((t) => t === piece) &&
              biased.choices[0].text === piece.repeat(4) &&
              biased.choices[0].text !== plain.choices[0].text,
          `openai: logit_bias +100 on token ${id} (${JSON.stringify(piece)}) makes it every ` +
              `token (${JSON.stringify(biased.choices[0].text)} vs ` +
              `${JSON.stringify(plain.choices[0].text)})`);
    // Another token at +99 and the first one at -100: the second one every time.
    const other = id + 1;
    const second = await openai.completions.create({...base, logit_bias: {[other]: 100}});
    const otherPiece = second.choices[0].logprobs.tokens[0];
    const swapped = await openai.completions.create({
      ...base, logit_bias: {[id]: -100, [other]: 99}});
    const swappedTokens = swapped.choices[0].logprobs.tokens;
    check(otherPiece !== piece && !swappedTokens.includes(piece) &&
              swappedTokens.every((t) => t === otherPiece),
          `openai: logit_bias -100 keeps token ${id} out, +99 on ${other} then wins ` +
              `(${JSON.stringify(swapped.choices[0].text)})`);
    const constrained = await openai.chat.completions.create({
      model: modelName, messages, max_tokens: 400, temperature: 0, logit_bias: {[id]: 100},
      response_format: jsonSchemaFormat});
    const p = parses(constrained.choices[0].message.content);
    check(p.ok && matchesSchema(p.value),
          'openai: logit_bias +100 on a token the grammar forbids: still a matching document');
  });

  await attempt('ollama: format', async () => {
    const json = await ollama.chat({model: modelName, stream: false, format: 'json',
                                    options: {temperature: 0, num_predict: 300}, messages});
    const p = parses(json.message.content);
    check(json.done_reason === 'stop' && p.ok && typeof p.value === 'object',
          `ollama: chat() format "json" gives a JSON object (${JSON.stringify(json.message.content)})`);
    const shaped = await ollama.chat({model: modelName, stream: false, format: schema,
                                      options: {temperature: 0.8, seed: 3, num_predict: 400},
                                      messages});
    const q = parses(shaped.message.content);
    check(q.ok && matchesSchema(q.value),
          `ollama: chat() format SCHEMA matches it (${JSON.stringify(shaped.message.content)})`);
    let text = '';
    for await (const part of await ollama.generate({model: modelName, prompt: 'A person:',
                                                     stream: true, format: schema,
                                                     options: {temperature: 0, num_predict: 400}})) {
      text += part.response;
    }
    const g = parses(text);
    check(g.ok && matchesSchema(g.value), `ollama: generate() streamed with a schema (${text})`);
    const r = await status400(() => ollama.generate({model: modelName, prompt: 'x',
                                                      format: 'yaml'}));
    check(r.status === 400 && /invalid format/.test(r.error.error || r.error.message),
          `ollama: format "yaml": 400 (${r.error && (r.error.error || r.error.message)})`);
    const s = await status400(() => ollama.generate({model: modelName, prompt: 'x',
                                                      format: {type: 'bogus'}}));
    check(s.status === 400, `ollama: a bad schema: 400 (${s.error && s.error.message})`);
  });
  process.exit(failed() ? 1 : 0);
}
main().catch((e) => { console.log(`FAIL ${e.stack}`); process.exit(1); });
