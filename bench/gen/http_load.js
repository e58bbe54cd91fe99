// HTTP load for bench/compare.py: C concurrent keep-alive clients for D seconds against DynConfig's
// API or etcd's JSON gateway. Prints one JSON line: {ops, seconds, p50_ms, p99_ms, errors, statuses}.
//
//   BENCH_CONFIG='{"target":"dynconfig","mode":"read","url":"http://127.0.0.1:8090",
//                       "token":"…","prefix":"bench.r","keys":1000,"concurrency":64,"seconds":10}'
//
// mode: "read" (GET a random one of `keys` keys), "write" (each client PUTs its own keys in turn),
// "write-hot" (every client PUTs the same key), "fill" (PUT prefix.0 … prefix.keys-1 once, then stop).
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

function request(method, path, body, headers) {
  return new Promise((resolve) => {
    const data = body === undefined ? undefined : Buffer.from(body);
    const req = http.request({
      agent, host: url.hostname, port: url.port, method, path,
      headers: { ...headers, ...(data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}) },
    }, (res) => {
      res.on('data', () => {});
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    if (data) req.write(data);
    req.end();
  });
}

let filled = 0;

function call(client, n) {
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
  }));
  if (timer) clearTimeout(timer);
  agent.destroy();
})();
