// Abuse and shutdown checks against a running `moeflow serve` (or `moeflow
// launch` with http_address), with plain sockets and http (no packages):
//   node hardening_clients.js idle PORT MODEL SOCKETS
//     holds SOCKETS idle connections (what the probe did), then
//     checks that /health and /metrics answer on new connections and that a
//     stream running meanwhile completes; prints the seconds each took.
//   node hardening_clients.js drain PORT MODEL PID WANT
//     starts a long streaming completion, sends SIGTERM to PID once tokens
//     flow, then checks: /health on a kept-alive connection is 503
//     "draining", a new connection is refused, and the stream ends as WANT
//     says: "finish" (finish_reason length, then [DONE]) or "cancel" (an
//     error event with code "unavailable", then [DONE]).
// Prints "ok   ..." / "FAIL ..." lines and one "TIMING name seconds" line per
// measurement; exits 1 when a check failed. Every wait is bounded.
'use strict';
const http = require('http');
const net = require('net');

const [mode, portText, model, arg1, arg2] = process.argv.slice(2);
const port = Number(portText);
let failures = 0;
function check(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures++;
}
function timing(name, seconds) { console.log(`TIMING ${name} ${seconds.toFixed(3)}`); }
const now = () => Number(process.hrtime.bigint()) / 1e9;
setTimeout(() => { console.log('FAIL ran past 240 s'); process.exit(1); }, 240000).unref();

// One request; resolves {status, headers, body} or {error}.
function request(path, {method = 'GET', body = null, agent = false, timeoutMs = 20000} = {}) {
  return new Promise((resolve) => {
    const req = http.request({host: '127.0.0.1', port, path, method, agent,
                              headers: body ? {'Content-Type': 'application/json'} : {}},
                             (res) => {
                               let data = '';
                               res.setEncoding('utf8');
                               res.on('data', (c) => { data += c; });
                               res.on('end', () => resolve({status: res.statusCode,
                                                            headers: res.headers, body: data}));
                               res.on('error', (e) => resolve({error: e.message, body: data}));
                             });
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({error: e.code || e.message}));
    if (body) req.write(JSON.stringify(body));
    req.end();
  });
}

// A streaming /v1/completions; onEvent(parsed or '[DONE]') per SSE event.
function stream(body, onEvent) {
  return new Promise((resolve) => {
    const req = http.request({host: '127.0.0.1', port, path: '/v1/completions', method: 'POST',
                              agent: false, headers: {'Content-Type': 'application/json'}},
                             (res) => {
                               let buffer = '';
                               const events = [];
                               res.setEncoding('utf8');
                               res.on('data', (c) => {
                                 buffer += c;
                                 let at;
                                 while ((at = buffer.indexOf('\n\n')) >= 0) {
                                   const line = buffer.slice(0, at);
                                   buffer = buffer.slice(at + 2);
                                   if (!line.startsWith('data: ')) continue;
                                   const text = line.slice(6);
                                   const e = text === '[DONE]' ? '[DONE]' : JSON.parse(text);
                                   events.push(e);
                                   if (onEvent) onEvent(e);
                                 }
                               });
                               res.on('end', () => resolve({status: res.statusCode, events,
                                                            rest: buffer}));
                               res.on('error', (e) => resolve({status: res.statusCode, events,
                                                               error: e.message}));
                             });
    req.setTimeout(120000, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({error: e.code || e.message, events: []}));
    req.write(JSON.stringify(body));
    req.end();
  });
}

function connectOnce(timeoutMs) {
  return new Promise((resolve) => {
    const s = net.connect({host: '127.0.0.1', port});
    const timer = setTimeout(() => { s.destroy(); resolve('timeout'); }, timeoutMs);
    s.on('connect', () => { clearTimeout(timer); resolve(s); });
    s.on('error', (e) => { clearTimeout(timer); resolve(e.code); });
  });
}

async function idle(count) {
  // A stream that runs while the sockets pile up.
  const streaming = stream({model, prompt: 'Count:', max_tokens: 3000, temperature: 0,
                            stream: true});
  const t0 = now();
  const sockets = [];
  let opened = 0, closedByServer = 0;
  for (let i = 0; i < count; i++) {
    const s = await connectOnce(10000);
    if (typeof s === 'string') continue;
    opened++;
    s.on('close', () => { closedByServer++; });
    s.on('error', () => {});
    sockets.push(s);
  }
  timing('open_idle_sockets', now() - t0);
  check(opened === count, `held ${opened} of ${count} idle sockets open`);
  let t = now();
  const health = await request('/health');
  timing('health_with_idle_sockets', now() - t);
  check(health.status === 200 && /"ok"/.test(health.body || ''),
        `/health answers 200 with ${count} idle sockets held (${health.status || health.error})`);
  t = now();
  const metrics = await request('/metrics');
  timing('metrics_with_idle_sockets', now() - t);
  check(metrics.status === 200 && /moeflow_requests_total/.test(metrics.body || ''),
        `/metrics answers 200 with ${count} idle sockets held (${metrics.status || metrics.error})`);
  const done = await streaming;
  const last = done.events[done.events.length - 1];
  const finish = done.events.find((e) => e !== '[DONE]' && e.choices && e.choices.length &&
                                         e.choices[0].finish_reason);
  check(last === '[DONE]' && finish && finish.choices[0].finish_reason === 'length',
        'a stream running meanwhile completes (finish_reason length, [DONE])');
  console.log(`idle sockets the server closed to make room: ${closedByServer}`);
  for (const s of sockets) s.destroy();
}

async function drain(pid, want) {
  const agent = new http.Agent({keepAlive: true, maxSockets: 1});
  const before = await request('/health', {agent});
  check(before.status === 200, '/health is 200 before the signal');
  let signalled = 0;
  const t0 = now();
  const streaming = stream({model, prompt: 'Count:', max_tokens: 4000, temperature: 0,
                            stream: true, ignore_eos: true},
                           (e) => {
                             if (!signalled && e !== '[DONE]') {
                               signalled = now();
                               process.kill(pid, 'SIGTERM');
                             }
                           });
  // Give the server a moment to see the signal.
  while (!signalled && now() - t0 < 60) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300));
  if (want === 'finish') {
    const during = await request('/health', {agent});
    check(during.status === 503 && /draining/.test(during.body || '') &&
              during.headers && during.headers['retry-after'],
          `/health on a kept-alive connection is 503 draining with Retry-After ` +
              `(${during.status || during.error} ${during.body})`);
    const fresh = await connectOnce(5000);
    check(fresh === 'ECONNREFUSED', `a new connection is refused while draining (${
        typeof fresh === 'string' ? fresh : 'connected'})`);
    if (typeof fresh !== 'string') fresh.destroy();
  }
  const done = await streaming;
  const ended = now();
  timing('stream_end_after_sigterm', ended - signalled);
  const events = done.events;
  const last = events[events.length - 1];
  check(last === '[DONE]', `the stream ends with [DONE] (${JSON.stringify(last)})`);
  if (want === 'finish') {
    const finish = events.find((e) => e !== '[DONE]' && e.choices && e.choices.length &&
                                      e.choices[0].finish_reason);
    check(finish && finish.choices[0].finish_reason === 'length',
          'the running stream finishes within the grace period (finish_reason length)');
  } else {
    const error = events.find((e) => e !== '[DONE]' && e.error);
    check(error && error.error.code === 'unavailable' && error.error.type === 'server_error' &&
              /shutting down/.test(error.error.message),
          `the cancelled stream gets the documented error event (${JSON.stringify(error)})`);
  }
  agent.destroy();
}

(async () => {
  if (mode === 'idle') await idle(Number(arg1));
  else if (mode === 'drain') await drain(Number(arg1), arg2);
  else { console.log(`FAIL unknown mode ${mode}`); failures++; }
  process.exit(failures ? 1 : 0);
})();
