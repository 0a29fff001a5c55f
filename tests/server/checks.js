// What the client scripts (client_compat.js, constrained_clients.js) share:
// one "ok"/"FAIL" line per check, the count of failed ones, a time limit.
'use strict';
let failures = 0;
function check(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures++;
}
// Runs `fn`; an exception is one failed check named `what`.
async function attempt(what, fn) {
  try {
    await fn();
  } catch (e) {
    check(false, `${what}: ${e.status || ''} ${e.message}`);
  }
}
// Fails the script `name` once it has run `seconds`.
function limit(name, seconds) {
  setTimeout(() => { console.log(`FAIL ${name} ran past ${seconds} s`); process.exit(1); },
             seconds * 1000).unref();
}
function failed() { return failures; }
module.exports = {check, attempt, limit, failed};
