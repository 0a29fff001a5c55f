// End-to-end client checks against a running `moeflow serve` (real tiny
// model) and scripted_server (scripted output, for tool calls), with the
// official `openai` npm package and plain fetch:
//   node clients.js NODE_MODULES SERVE_PORT SCRIPTED_PORT MODEL_NAME
// Prints one line per check and exits 1 when any failed. Bounded: every
// request has a timeout and the whole run stops itself after 240 s.
'use strict';
const path = require('path');
const [nodeModules, servePort, scriptedPort, modelName] = process.argv.slice(2);
const OpenAI = require(path.join(nodeModules, 'openai')).default;

setTimeout(() => { console.error('FAIL: clients.js ran past 240 s'); process.exit(1); }, 240000)
    .unref();

let failures = 0;
function check(cond, what) {
  if (cond) { console.log(`ok   ${what}`); } else { console.log(`FAIL ${what}`); failures++; }
}

const serve = new OpenAI({baseURL: `http://127.0.0.1:${servePort}/v1`, apiKey: 'unused',
                          timeout: 60000, maxRetries: 0});
const scripted = new OpenAI({baseURL: `http://127.0.0.1:${scriptedPort}/v1`, apiKey: 'unused',
                             timeout: 60000, maxRetries: 0});

async function streamText(client, body) {
  const stream = await client.chat.completions.create({...body, stream: true,
                                                      stream_options: {include_usage: true}});
  let text = '', finish = null, usage = null, first = true, roleFirst = false, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    if (!chunk.choices.length) continue;
    const c = chunk.choices[0];
    if (first) { roleFirst = c.delta.role === 'assistant'; first = false; }
    if (c.delta.content) text += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
  return {text, finish, usage, roleFirst, chunks};
}

async function main() {
  // --- openai package: models, non-streaming, streaming, completions.
  const models = await serve.models.list();
  check(models.data.length === 1 && models.data[0].id === modelName, 'models.list');

  const messages = [{role: 'user', content: 'Write a haiku about the sea.'}];
  const full = await serve.chat.completions.create(
      {model: modelName, messages, max_tokens: 12, temperature: 0});
  check(full.object === 'chat.completion' && full.choices[0].finish_reason === 'length' &&
            full.usage.completion_tokens === 12,
        'chat.completions.create non-streaming');
  const streamed = await streamText(serve, {model: modelName, messages, max_tokens: 12,
                                            temperature: 0});
  check(streamed.roleFirst && streamed.finish === 'length' && streamed.usage &&
            streamed.usage.completion_tokens === 12,
        'chat.completions.create streaming (role first, finish, usage)');
  check(streamed.text === full.choices[0].message.content,
        'streamed text equals the non-streamed text (greedy)');

  const completion = await serve.completions.create(
      {model: modelName, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, logprobs: 2});
  check(completion.object === 'text_completion' && completion.choices[0].logprobs.tokens.length === 8,
        'completions.create with logprobs');

  const seeded = [];
  for (let i = 0; i < 2; i++) {
    seeded.push((await serve.chat.completions.create(
        {model: modelName, messages, max_tokens: 10, temperature: 0.9, seed: 7}))
                    .choices[0].message.content);
  }
  check(seeded[0] === seeded[1], 'same seed gives the same sampled text');

  // Errors surface as the package's APIError with the status.
  try {
    await serve.chat.completions.create({model: 'nope', messages});
    check(false, 'unknown model rejected');
  } catch (e) {
    check(e.status === 404 && e.code === 'model_not_found', 'unknown model → 404 model_not_found');
  }
  try {
    await serve.chat.completions.create({model: modelName, messages: []});
    check(false, 'empty messages rejected');
  } catch (e) {
    check(e.status === 400, 'empty messages → 400');
  }

  // --- Tools (scripted model writes a DeepSeek tool call).
  const tools = [{type: 'function', function: {name: 'get_weather', description: 'Weather of a city',
                   parameters: {type: 'object', properties: {city: {type: 'string'}}}}}];
  const toolReply = await scripted.chat.completions.create(
      {model: 'scripted', messages: [{role: 'user', content: 'Weather in Paris?'}], tools,
       temperature: 0});
  const call = toolReply.choices[0].message.tool_calls && toolReply.choices[0].message.tool_calls[0];
  check(toolReply.choices[0].finish_reason === 'tool_calls' && call &&
            call.function.name === 'get_weather' &&
            JSON.parse(call.function.arguments).city === 'Paris',
        'tools: non-streaming tool_calls');
  const toolStream = await scripted.chat.completions.create(
      {model: 'scripted', messages: [{role: 'user', content: 'Weather in Paris?'}], tools,
       temperature: 0, stream: true});
  let streamedCall = null, toolFinish = null;
  for await (const chunk of toolStream) {
    const c = chunk.choices[0];
    if (!c) continue;
    if (c.delta.tool_calls) streamedCall = c.delta.tool_calls[0];
    if (c.finish_reason) toolFinish = c.finish_reason;
  }
  check(toolFinish === 'tool_calls' && streamedCall && streamedCall.function.name === 'get_weather',
        'tools: streaming delta.tool_calls');
  // The tool result goes back in and the model answers.
  const followUp = await scripted.chat.completions.create({
    model: 'scripted', temperature: 0,
    messages: [{role: 'user', content: 'Weather in Paris?'}, toolReply.choices[0].message,
               {role: 'tool', tool_call_id: call ? call.id : 'x', content: '{"temp": 21}'}]});
  check(followUp.choices[0].message.content === 'Hello from moeflow!',
        'tools: tool result message accepted');

  // --- Ollama endpoints.
  const tags = await (await fetch(`http://127.0.0.1:${servePort}/api/tags`)).json();
  check(tags.models[0].name === modelName, 'ollama /api/tags');
  const ollamaChat = await (await fetch(`http://127.0.0.1:${servePort}/api/chat`, {
    method: 'POST',
    body: JSON.stringify({model: modelName, messages, stream: false,
                          options: {temperature: 0, num_predict: 6}})})).json();
  check(ollamaChat.done === true && ollamaChat.eval_count === 6 &&
            typeof ollamaChat.message.content === 'string',
        'ollama /api/chat non-streaming');
  const ndjson = await (await fetch(`http://127.0.0.1:${servePort}/api/generate`, {
    method: 'POST',
    body: JSON.stringify({model: modelName, prompt: 'Hello', options: {num_predict: 5}})})).text();
  const lines = ndjson.trim().split('\n').map((l) => JSON.parse(l));
  check(lines.length >= 2 && lines[lines.length - 1].done === true &&
            lines.slice(0, -1).every((l) => l.done === false),
        'ollama /api/generate NDJSON streaming');

  // --- Load: 32 concurrent streaming clients; greedy outputs equal the
  // same prompts run one at a time.
  const N = 32;
  const prompts = Array.from({length: N}, (_, i) => `Request ${i}: tell me about number ${i * 7}.`);
  const body = (p) => ({model: modelName, messages: [{role: 'user', content: p}], max_tokens: 16,
                        temperature: 0});
  const sequential = [];
  for (const p of prompts) sequential.push(await streamText(serve, body(p)));
  const t0 = Date.now();
  const concurrent = await Promise.allSettled(prompts.map((p) => streamText(serve, body(p))));
  const seconds = (Date.now() - t0) / 1000;
  const fulfilled = concurrent.filter((r) => r.status === 'fulfilled').map((r) => r.value);
  check(fulfilled.length === N, `load: ${fulfilled.length}/${N} concurrent streams completed`);
  check(fulfilled.every((r) => r.roleFirst && r.finish && r.usage),
        'load: every stream well-formed (role first, finish_reason, usage)');
  let same = 0;
  concurrent.forEach((r, i) => {
    if (r.status === 'fulfilled' && r.value.text === sequential[i].text) same++;
  });
  check(same === N, `load: ${same}/${N} outputs equal the one-at-a-time outputs`);
  const tokens = fulfilled.reduce((s, r) => s + r.usage.completion_tokens, 0);
  console.log(`load: ${N} streams, ${tokens} tokens in ${seconds.toFixed(2)} s ` +
              `(${(tokens / seconds).toFixed(1)} tok/s aggregate)`);
}

main().then(() => {
  console.log(failures ? `${failures} check(s) failed` : 'all client checks passed');
  process.exit(failures ? 1 : 0);
}, (e) => {
  console.log(`FAIL exception: ${e.stack || e}`);
  process.exit(1);
});
