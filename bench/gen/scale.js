// The scale-of-data runs of bench/compare.py (bench/scale.py), against DynConfig or etcd's JSON gateway.
// Prints one JSON line.
//
//   BENCH_CONFIG='{"mode":"list","target":"dynconfig","url":"http://127.0.0.1:8090","token":"…",
//                  "namespace":"bench.list","page":100,"to_page":1000,"fetches":50}'
//
// mode "load" (etcd): PUT every key of `sets` ([{prefix, count, pad}]: prefix.0 … or zero-padded to `pad`
//   digits), `batch` puts per /v3/kv/txn, `concurrency` at once; value = value(i) of bench/scale.py.
//   → {keys, seconds, errors}
// mode "list": GET /keys?namespace=&limit= (etcd: range [ns., ns/) with limit), `fetches` times; then
//   follows the cursor (etcd: the next range starts after the last key) to page `to_page` and fetches
//   that page `fetches` times. → {first: {p50_ms, p99_ms, max_ms, keys}, last: {…}, walk_seconds, total}
// mode "snapshot": subscribe to `namespace`.* with snapshot: true (etcd: one range of the prefix) and
//   wait for `expect` update frames, `runs` times one after the other, each on a new connection.
//   → {seconds: [time from subscribe to the last snapshot frame, …], first_frame_ms (to the first one),
//   frames, bytes} of the last run
'use strict';
const http = require('http');
const WebSocket = require('ws');

const cfg = JSON.parse(process.env.BENCH_CONFIG);  // not argv: it holds a token
const url = new URL(cfg.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: cfg.concurrency || 1 });
const etcd = cfg.target === 'etcd';

function b64(text) { return Buffer.from(text).toString('base64'); }
function ms(started) { return Number(process.hrtime.bigint() - started) / 1e6; }

// bench/scale.py's value(i), byte for byte (compact JSON).
function value(i) { return JSON.stringify({ n: i, enabled: i % 2 === 0, owner: `team-${i % 50}` }); }

function request(method, path, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers = etcd ? {} : { Authorization: `Bearer ${cfg.token}` };
    if (data) Object.assign(headers, { 'Content-Type': 'application/json', 'Content-Length': data.length });
    const req = http.request({ agent, host: url.hostname, port: url.port, method, path, headers }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode !== 200) reject(new Error(`${method} ${path}: ${res.statusCode} ${text.slice(0, 200)}`));
        else resolve(JSON.parse(text));
      });
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

function percentiles(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const pick = (q) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
  return { p50_ms: pick(0.5), p99_ms: pick(0.99), max_ms: sorted[sorted.length - 1] };
}

async function load() {
  const started = process.hrtime.bigint();
  const names = function* () {
    for (const set of cfg.sets) {
      for (let i = 0; i < set.count; i++) yield [`${set.prefix}.${String(i).padStart(set.pad, '0')}`, i];
    }
  }();
  let keys = 0;
  let errors = 0;
  async function worker() {
    for (;;) {
      const success = [];
      while (success.length < cfg.batch) {
        const next = names.next();
        if (next.done) break;
        const [key, i] = next.value;
        success.push({ request_put: { key: b64(key), value: b64(value(i)) } });
      }
      if (!success.length) return;
      try { await request('POST', '/v3/kv/txn', { success }); keys += success.length; } catch (err) { errors++; }
    }
  }
  await Promise.all(Array.from({ length: cfg.concurrency }, worker));
  return { keys, seconds: ms(started) / 1000, errors };
}

// One page: its keys, the total, and where the next page starts (null after the last).
async function page(after) {
  if (etcd) {
    const start = after === null ? `${cfg.namespace}.` : `${after}\0`;
    const body = { key: b64(start), range_end: b64(`${cfg.namespace}/`), limit: cfg.page, keys_only: true };
    const res = await request('POST', '/v3/kv/range', body);
    const keys = (res.kvs || []).map((kv) => Buffer.from(kv.key, 'base64').toString());
    return { keys, total: Number(res.count), next: res.more ? keys[keys.length - 1] : null };
  }
  const cursor = after === null ? '' : `&cursor=${encodeURIComponent(after)}`;
  const res = await request('GET', `/keys?namespace=${cfg.namespace}&limit=${cfg.page}${cursor}`);
  return { keys: res.keys, total: res.total, next: res.next || null };
}

async function timed(after) {
  const samples = [];
  let keys = 0;
  for (let i = 0; i < cfg.fetches; i++) {
    const started = process.hrtime.bigint();
    keys = (await page(after)).keys.length;
    samples.push(ms(started));
  }
  return { ...percentiles(samples), keys };
}

async function list() {
  const first = await timed(null);
  const started = process.hrtime.bigint();
  let after = null;
  let total = 0;
  for (let n = 1; n < cfg.to_page; n++) {
    const result = await page(after);
    total = total || result.total;
    after = result.next;
    if (after === null) throw new Error(`the listing ended at page ${n}`);
  }
  const walkSeconds = ms(started) / 1000;
  return { first, last: await timed(after), walk_seconds: walkSeconds, total };
}

function snapshotDynconfig() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(cfg.url, { headers: { Authorization: `Bearer ${cfg.token}` }, perMessageDeflate: false,
      maxPayload: 0 });
    let started = null;
    let firstFrame = null;
    let frames = 0;
    let bytes = 0;
    ws.on('open', () => {
      started = process.hrtime.bigint();
      ws.send(JSON.stringify({ subscribe: [`${cfg.namespace}.*`], snapshot: true }));
    });
    ws.on('message', (data) => {
      bytes += data.length;
      if (!data.includes('"event":"update"')) return;  // "subscribed"
      if (firstFrame === null) firstFrame = ms(started);
      if (++frames === cfg.expect) {
        const seconds = ms(started) / 1000;
        ws.close();
        resolve({ seconds, first_frame_ms: firstFrame, frames, bytes });
      }
    });
    ws.on('error', reject);
    ws.on('close', () => reject(new Error(`closed after ${frames} of ${cfg.expect} frames`)));
  });
}

async function snapshotEtcd() {
  const started = process.hrtime.bigint();
  const res = await request('POST', '/v3/kv/range', { key: b64(`${cfg.namespace}.`), range_end: b64(`${cfg.namespace}/`) });
  const frames = (res.kvs || []).length;
  if (frames !== cfg.expect) throw new Error(`the range held ${frames} of ${cfg.expect} keys`);
  return { seconds: ms(started) / 1000, first_frame_ms: null, frames, bytes: null };
}

async function snapshot() {
  const runs = [];
  for (let i = 0; i < cfg.runs; i++) runs.push(await (etcd ? snapshotEtcd() : snapshotDynconfig()));
  return { ...runs[runs.length - 1], seconds: runs.map((r) => r.seconds) };
}

(async () => {
  const result = await { load, list, snapshot }[cfg.mode]();
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
})().catch((err) => { console.error(String(err)); process.exit(1); });
