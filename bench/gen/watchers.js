// WebSocket (DynConfig /watch) or HTTP-stream (etcd /v3/watch) watchers for bench/compare.py.
// Opens `count` watchers on `key`, reports when all are subscribed, then records, for every update a
// watcher receives, receive time minus the send time the writer put in the value ({"t": ms}).
// Prints JSON lines: {"ready": seconds_to_open} once, then {"latencies_ms": [...], "received": n}.
//
//   BENCH_CONFIG='{"target":"dynconfig","url":"ws://127.0.0.1:8081/watch","token":"…",
//                      "key":"bench.p.k","count":1000,"seconds":20}'
'use strict';
const http = require('http');
const WebSocket = require('ws');

const cfg = JSON.parse(process.env.BENCH_CONFIG);  // not argv: it holds a token
const latencies = [];
let received = 0;
const T = /"t":([0-9.]+)/;

function now() { return performance.timeOrigin + performance.now(); }

function record(text) {
  const m = T.exec(text);
  if (m) { latencies.push(Math.round((now() - Number(m[1])) * 100) / 100); received++; }
}

function openDynconfig() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(cfg.url, { headers: { Authorization: `Bearer ${cfg.token}` }, perMessageDeflate: false });
    ws.on('open', () => ws.send(JSON.stringify({ subscribe: [cfg.key] })));
    let subscribed = false;
    ws.on('message', (data) => {
      if (!subscribed) { subscribed = true; resolve(ws); return; }
      record(data.toString());
    });
    ws.on('error', reject);
  });
}

const etcdAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

function openEtcd() {
  return new Promise((resolve, reject) => {
    const url = new URL(cfg.url);
    const body = JSON.stringify({ create_request: { key: Buffer.from(cfg.key).toString('base64') } });
    const req = http.request({ agent: etcdAgent, host: url.hostname, port: url.port, method: 'POST',
      path: '/v3/watch', headers: { 'Content-Type': 'application/json', 'Content-Length': body.length } }, (res) => {
      let created = false;
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, end); buffer = buffer.slice(end + 1);
          if (!created) { created = true; resolve(req); continue; }
          const events = JSON.parse(line).result.events || [];
          for (const e of events) record(Buffer.from(e.kv.value || '', 'base64').toString());
        }
      });
    });
    req.on('error', reject);
    req.write(body);
  });
}

(async () => {
  const started = now();
  const open = cfg.target === 'etcd' ? openEtcd : openDynconfig;
  const sockets = [];
  for (let i = 0; i < cfg.count; i += 200) {  // in waves: a burst of 10,000 SYNs overflows the backlog
    const wave = await Promise.all(Array.from({ length: Math.min(200, cfg.count - i) }, () => open()));
    sockets.push(...wave);
  }
  console.log(JSON.stringify({ ready: (now() - started) / 1000 }));
  setTimeout(() => {
    // exit only once the (large) line is written: process.exit() would cut a pipe write short
    process.stdout.write(JSON.stringify({ received, latencies_ms: latencies }) + '\n', () => process.exit(0));
  }, cfg.seconds * 1000);
})().catch((err) => { console.error(String(err)); process.exit(1); });
