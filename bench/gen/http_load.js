// HTTP load for bench/compare.py: C concurrent keep-alive clients for D seconds against DynConfig's
// API or etcd's JSON gateway. Prints one JSON line: {ops, seconds, p50_ms, p99_ms, errors, statuses}.
//
//   BENCH_CONFIG='{"target":"dynconfig","mode":"read","url":"http://127.0.0.1:8090",
//                       "token":"…","prefix":"bench.r","keys":1000,"concurrency":64,"seconds":10}'
//
// mode: "read" (GET a random one of `keys` keys), "write" (each client PUTs its own keys in turn),
// "write-hot" (every client PUTs the same key), "fill" (PUT prefix.0 … prefix.keys-1 once, then stop),
// "txn" (each client sends transactions of `ops` puts on its own keys: POST /txn, etcd POST /v3/kv/txn;
// the client's n-th transaction writes prefix.c<client>.<(n·ops + j) mod max(50, ops)>, j < ops, so no
// key repeats within a transaction and no two clients share a key; a 200 counts only when its body has
// one result per op — etcd: succeeded and one response per op). "ops" in the output is always requests
// (here: transactions) per second; txn mode adds `error_sample`, the first failure's status and body.
'use strict';
const http = require('http');

const cfg = JSON.parse(process.env.BENCH_CONFIG);  // not argv: it holds a token
const url = new URL(cfg.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: cfg.concurrency });
const latencies = [];
const statuses = {};
let errors = 0;
let stop = false;

function b64(text) { return Buffer.from(text).toString('base64'); }

// Resolves to the status (0: no answer); with `check`, to check(status, body text) instead.
function request(method, path, body, headers, check) {
  return new Promise((resolve) => {
    const data = body === undefined ? undefined : Buffer.from(body);
    const req = http.request({
      agent, host: url.hostname, port: url.port, method, path,
      headers: { ...headers, ...(data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}) },
    }, (res) => {
      const chunks = check ? [] : null;
      res.on('data', (chunk) => { if (chunks) chunks.push(chunk); });
      res.on('end', () => resolve(chunks ? check(res.statusCode, Buffer.concat(chunks).toString()) : res.statusCode));
    });
    req.on('error', (err) => resolve(check ? check(0, String(err)) : 0));
    if (data) req.write(data);
    req.end();
  });
}

let errorSample = null;

// A transaction's answer: its status if the body holds one result per op, 'bad-body' otherwise.
function checkTxn(status, text) {
  let ok = status === 200;
  if (ok) {
    try {
      const answer = JSON.parse(text);
      ok = cfg.target === 'etcd'
        ? answer.succeeded === true && (answer.responses || []).length === cfg.ops
        : Array.isArray(answer.results) && answer.results.length === cfg.ops;
    } catch (err) { ok = false; }
    if (!ok) status = 'bad-body';
  }
  if (!ok && errorSample === null) errorSample = `${status} ${text.slice(0, 300)}`;
  return status;
}

function txn(client, n) {
  const pool = Math.max(50, cfg.ops);
  const keys = Array.from({ length: cfg.ops }, (_, j) => `${cfg.prefix}.c${client}.${(n * cfg.ops + j) % pool}`);
  if (cfg.target === 'etcd') {
    const value = b64(JSON.stringify({ n }));
    const success = keys.map((key) => ({ requestPut: { key: b64(key), value } }));
    return request('POST', '/v3/kv/txn', JSON.stringify({ success }), {}, checkTxn);
  }
  const ops = keys.map((key) => ({ op: 'put', key, value: { n } }));
  return request('POST', '/txn', JSON.stringify({ ops }), { Authorization: `Bearer ${cfg.token}` }, checkTxn);
}

let filled = 0;

function call(client, n) {
  if (cfg.mode === 'txn') return txn(client, n);
  const key = cfg.mode === 'fill' ? `${cfg.prefix}.${filled++}`
    : cfg.mode === 'read' ? `${cfg.prefix}.${Math.floor(Math.random() * cfg.keys)}`
    : cfg.mode === 'write-hot' ? `${cfg.prefix}.hot` : `${cfg.prefix}.c${client}.${n % 50}`;
  if (cfg.target === 'etcd') {
    if (cfg.mode === 'read') return request('POST', '/v3/kv/range', JSON.stringify({ key: b64(key) }));
    return request('POST', '/v3/kv/put', JSON.stringify({ key: b64(key), value: b64(JSON.stringify({ n })) }));
  }
  const auth = { Authorization: `Bearer ${cfg.token}` };
  const path = `/keys/${key}`;
  if (cfg.mode === 'read') return request('GET', path, undefined, auth);
  return request('PUT', path, JSON.stringify({ value: { n } }), auth);
}

async function client(i) {
  let n = 0;
  while (!stop && !(cfg.mode === 'fill' && filled >= cfg.keys)) {
    const started = process.hrtime.bigint();
    const status = await call(i, n++);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    statuses[status] = (statuses[status] || 0) + 1;
    if (status >= 200 && status < 300) latencies.push(ms); else errors++;
  }
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

(async () => {
  const started = Date.now();
  const timer = cfg.mode === 'fill' ? null : setTimeout(() => { stop = true; }, cfg.seconds * 1000);
  await Promise.all(Array.from({ length: cfg.concurrency }, (_, i) => client(i)));
  const seconds = (Date.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  console.log(JSON.stringify({
    ops: latencies.length / seconds, seconds, p50_ms: percentile(latencies, 0.5),
    p99_ms: percentile(latencies, 0.99), errors, statuses,
    ...(cfg.mode === 'txn' ? { error_sample: errorSample } : {}),
  }));
  if (timer) clearTimeout(timer);
  agent.destroy();
})();
