// Client compatibility (issue 19) against a running `moeflow serve` on the
// tiny-v3 fixture (deepseek-v2 chat template), with the official `openai`
// and `ollama` npm packages:
//   node client_compat.js NODE_MODULES PORT MODEL_NAME
// The standard tool round-trip (assistant content null + tool_calls, then
// the tool's result), the developer role, n > 1 (two choices, streamed too;
// the other choices reuse the prompt's KV, read from /metrics), Ollama's list / show / ps (a real
// digest, capabilities, model_info) and chat. One "ok"/"FAIL" line per
// check; exits 1 when one failed. Bounded (every request times out; the run
// stops itself after 240 s).
'use strict';
const path = require('path');
const [nodeModules, port, modelName] = process.argv.slice(2);
const OpenAI = require(path.join(nodeModules, 'openai')).default;
const {Ollama} = require(path.join(nodeModules, 'ollama'));

const {check, attempt, limit, failed} = require('./checks.js');

limit('client_compat.js', 240);

const openai = new OpenAI({baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused',
                           timeout: 60000, maxRetries: 0});
const ollama = new Ollama({host: `http://127.0.0.1:${port}`});

const tools = [{type: 'function', function: {
  name: 'get_weather', description: 'Get the current weather for a city.',
  parameters: {type: 'object', properties: {city: {type: 'string'}}, required: ['city']}}}];

async function main() {
  await attempt('openai: tool round-trip', async () => {
    // What an agent sends back after running the tool the model called.
    const r = await openai.chat.completions.create({
      model: modelName, max_tokens: 8, temperature: 0, tools,
      messages: [
        {role: 'user', content: 'Weather in Paris?'},
        {role: 'assistant', content: null, tool_calls: [{id: 'call_1', type: 'function',
          function: {name: 'get_weather', arguments: '{"city":"Paris"}'}}]},
        {role: 'tool', tool_call_id: 'call_1', content: '{"temp_c": 18}'},
      ]});
    check(r.object === 'chat.completion' && r.usage.completion_tokens > 0,
          'openai: assistant content null + tool_calls, then the tool result: 200');
  });
  await attempt('openai: streamed tool round-trip', async () => {
    const stream = await openai.chat.completions.create({
      model: modelName, max_tokens: 6, temperature: 0, tools, stream: true,
      messages: [
        {role: 'user', content: 'Weather?'},
        {role: 'assistant', content: '', tool_calls: [{id: 'c', type: 'function',
          function: {name: 'get_weather', arguments: '{"city":"Oslo"}'}}]},
        {role: 'tool', tool_call_id: 'c', content: 'sunny'},
      ]});
    let finish = null;
    for await (const chunk of stream) {
      if (chunk.choices.length && chunk.choices[0].finish_reason) {
        finish = chunk.choices[0].finish_reason;
      }
    }
    check(finish !== null, 'openai: the same with content "" and streaming');
  });
  await attempt('openai: developer role', async () => {
    const r = await openai.chat.completions.create({
      model: modelName, max_tokens: 6, temperature: 0,
      messages: [{role: 'developer', content: 'Answer in French.'},
                 {role: 'user', content: 'Hello'}]});
    check(r.choices[0].message.role === 'assistant', 'openai: the developer role: 200');
  });

  await attempt('openai: n', async () => {
    const r = await openai.chat.completions.create({
      model: modelName, max_tokens: 8, temperature: 1, seed: 11, n: 2,
      messages: [{role: 'user', content: 'Name a color.'}]});
    check(r.choices.length === 2 && r.choices[0].index === 0 && r.choices[1].index === 1 &&
              r.choices.every((c) => typeof c.message.content === 'string' && c.finish_reason),
          `openai: n = 2 gives two choices (${JSON.stringify(r.choices.map((c) => c.message.content))})`);
    const stream = await openai.chat.completions.create({
      model: modelName, max_tokens: 8, temperature: 1, seed: 11, n: 2, stream: true,
      stream_options: {include_usage: true},
      messages: [{role: 'user', content: 'Name a color.'}]});
    const text = ['', ''], finish = [null, null];
    let usage = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text[c.index] += c.delta.content || '';
        finish[c.index] = c.finish_reason || finish[c.index];
      }
    }
    check(finish[0] && finish[1] && text[0] === r.choices[0].message.content &&
              text[1] === r.choices[1].message.content &&
              usage.completion_tokens === r.usage.completion_tokens,
          'openai: n = 2 streamed: both choices, the same texts (same seed), one usage');
    // A prompt no earlier request had: the other choices reuse its KV blocks.
    const metric = async (name) => {
      const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const line = body.split('\n').find((l) => l.startsWith(name + ' '));
      return Number(line.split(' ')[1]);
    };
    const before = await metric('moeflow_prompt_cached_tokens_total');
    const topic = `${Date.now()} ` + 'the lighthouse keeper counts the gulls at dawn '.repeat(8);
    const three = await openai.chat.completions.create({
      model: modelName, max_tokens: 4, temperature: 1, n: 3,
      messages: [{role: 'user', content: topic}]});
    const reused = (await metric('moeflow_prompt_cached_tokens_total')) - before;
    const blocks = Math.floor((three.usage.prompt_tokens - 1) / 16) * 16;
    check(three.choices.length === 3 && three.usage.prompt_tokens > 64 && reused >= 2 * blocks,
          `openai: n = 3 computes the prompt once: ${reused} prompt tokens reused for the other ` +
              `two choices of ${three.usage.prompt_tokens} (whole 16-token blocks: ${blocks} each)`);
    const completion = await openai.completions.create({
      model: modelName, prompt: 'Hello', max_tokens: 4, temperature: 1, n: 3});
    check(completion.choices.length === 3 &&
              completion.choices.map((c) => c.index).join() === '0,1,2',
          '/v1/completions: n = 3');
    let status = 0;
    try {
      await openai.chat.completions.create({model: modelName, max_tokens: 4, n: 17,
                                            messages: [{role: 'user', content: 'x'}]});
    } catch (e) { status = e.status; }
    check(status === 400, `openai: n = 17: 400 (${status})`);
  });

  await attempt('ollama: list', async () => {
    const list = await ollama.list();
    const m = list.models[0];
    check(list.models.length === 1 && m.name === modelName && /^[0-9a-f]{64}$/.test(m.digest) &&
              m.size > 0 && m.details.parameter_size && m.details.family === 'deepseek2',
          `ollama: list() with a real digest (${m && m.digest}) and details`);
    const again = await ollama.list();
    check(again.models[0].digest === m.digest, 'ollama: the digest is stable');
  });
  await attempt('ollama: show', async () => {
    const shown = await ollama.show({model: modelName});
    check(Array.isArray(shown.capabilities) && shown.capabilities.includes('completion') &&
              shown.capabilities.includes('tools'),
          `ollama: show() capabilities ${JSON.stringify(shown.capabilities)}`);
    check(shown.model_info['general.architecture'] === 'deepseek2' &&
              shown.model_info['deepseek2.block_count'] > 0 &&
              shown.model_info['general.parameter_count'] > 0,
          'ollama: show() model_info from the GGUF');
    check(typeof shown.template === 'string' && shown.details.format === 'gguf',
          'ollama: show() template and details');
    let status = 0;
    try { await ollama.show({model: 'other-model'}); } catch (e) { status = e.status_code; }
    check(status === 404, `ollama: show() of another model: 404 (${status})`);
  });
  await attempt('ollama: ps', async () => {
    const ps = await ollama.ps();
    check(ps.models.length === 1 && ps.models[0].name === modelName && ps.models[0].expires_at,
          'ollama: ps() lists the loaded model');
  });
  await attempt('ollama: chat', async () => {
    const r = await ollama.chat({model: modelName, stream: false,
                                 options: {temperature: 0, num_predict: 6},
                                 messages: [{role: 'user', content: 'Hi'}]});
    check(r.done && typeof r.message.content === 'string', 'ollama: chat() non-streaming');
    const tool = await ollama.chat({model: modelName, stream: false, tools,
                                    options: {temperature: 0, num_predict: 6},
                                    messages: [
                                      {role: 'user', content: 'Weather in Paris?'},
                                      {role: 'assistant', content: '', tool_calls: [
                                        {function: {name: 'get_weather',
                                                    arguments: {city: 'Paris'}}}]},
                                      {role: 'tool', content: '{"temp_c": 18}'}]});
    check(tool.done, 'ollama: chat() tool round-trip');
    let chunks = 0, done = false;
    for await (const part of await ollama.chat({model: modelName, stream: true,
                                                 options: {temperature: 0, num_predict: 6},
                                                 messages: [{role: 'user', content: 'Hi'}]})) {
      chunks++;
      done = done || part.done;
    }
    check(chunks >= 1 && done, 'ollama: chat() streaming');
  });
  process.exit(failed() ? 1 : 0);
}
main().catch((e) => { console.log(`FAIL ${e.stack}`); process.exit(1); });
