// The writer of the propagation run: updates one key `updates` times, `interval` ms apart, with its
// send time in the value ({"t": ms since the epoch, sub-ms}). Prints {"sent": n, "errors": e}.
'use strict';
const http = require('http');

const cfg = JSON.parse(process.env.BENCH_CONFIG);  // not argv: it holds a token
const url = new URL(cfg.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function send() {
  const t = performance.timeOrigin + performance.now();
  const value = JSON.stringify({ t });
  const etcd = cfg.target === 'etcd';
  const body = etcd
    ? JSON.stringify({ key: Buffer.from(cfg.key).toString('base64'), value: Buffer.from(value).toString('base64') })
    : JSON.stringify({ value: { t } });
  return new Promise((resolve) => {
    const req = http.request({ agent, host: url.hostname, port: url.port, method: etcd ? 'POST' : 'PUT',
      path: etcd ? '/v3/kv/put' : `/keys/${cfg.key}`,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body),
        ...(etcd ? {} : { Authorization: `Bearer ${cfg.token}` }) } }, (res) => {
      res.on('data', () => {}); res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    req.end(body);
  });
}

(async () => {
  let errors = 0;
  for (let i = 0; i < cfg.updates; i++) {
    const started = Date.now();
    const status = await send();
    if (status < 200 || status >= 300) errors++;
    await new Promise((r) => setTimeout(r, Math.max(0, cfg.interval - (Date.now() - started))));
  }
  console.log(JSON.stringify({ sent: cfg.updates, errors }));
  agent.destroy();
})();
