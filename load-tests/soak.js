// Soak test: a moderate constant rate for a long time. Catches leaks and slow drifts that a
// 30 s run cannot: memory, file descriptors, connection pools, latency creeping up.
//
//   RATE=1000 DURATION=30m ./load-tests/run-k6.sh soak.js
// Env: RATE [1000], DURATION [30m], VUS [100], MAX_VUS [1000],
//      ADMIN_URL [http://127.0.0.1:9090] (its /metrics is read before and after),
//      MAX_RSS_GROWTH_MB [64]: fail if the gateway's resident memory grew more than this.
import http from 'k6/http';
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import { ROUTES, envInt, env, signJwt, keyHeaders, bearerHeaders } from './lib/portcullis.js';

const ADMIN_URL = env('ADMIN_URL', 'http://127.0.0.1:9090').replace(/\/+$/, '');
const rssGrowth = new Trend('gateway_rss_growth_mb');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: envInt('RATE', 1000),
      timeUnit: '1s',
      duration: env('DURATION', '30m'),
      preAllocatedVUs: envInt('VUS', 100),
      maxVUs: envInt('MAX_VUS', 1000),
    },
  },
  thresholds: {
    http_req_duration: ['p(99)<150'],
    http_req_failed: ['rate<0.001'],
    gateway_rss_growth_mb: [`max<${envInt('MAX_RSS_GROWTH_MB', 64)}`],
  },
};

// process_* gauges from the admin /metrics (Prometheus text).
function processMetrics() {
  const res = http.get(`${ADMIN_URL}/metrics`, { responseType: 'text', tags: { name: 'admin-metrics' } });
  const out = {};
  if (res.status !== 200 || !res.body) return out;
  for (const line of res.body.split('\n')) {
    const m = /^(process_resident_memory_bytes|process_open_fds)\s+([0-9.eE+-]+)/.exec(line);
    if (m) out[m[1]] = parseFloat(m[2]);
  }
  return out;
}

export function setup() {
  const tokens = [];
  for (let i = 0; i < 50; i++) tokens.push(signJwt({ sub: `k6-soak-${i}`, exp: Math.floor(Date.now() / 1000) + 86400 }));
  const before = processMetrics();
  console.log(`gateway before: ${JSON.stringify(before)}`);
  if (before.process_resident_memory_bytes === undefined) {
    // nothing to compare against: the memory threshold could never fail, so stop here
    throw new Error(`no process_resident_memory_bytes at ${ADMIN_URL}/metrics: cannot measure memory`);
  }
  return { tokens, before };
}

export default function (data) {
  const n = Math.random();
  const id = Math.floor(Math.random() * 1000);
  let res;
  if (n < 0.4) res = http.get(ROUTES.public(id));
  else if (n < 0.7) res = http.get(ROUTES.keyed(id), { headers: keyHeaders() });
  else if (n < 0.9) res = http.get(ROUTES.secure(id), { headers: bearerHeaders(data.tokens[id % data.tokens.length]) });
  else res = http.get(ROUTES.cached(id % 100));
  check(res, { 'status 200': (r) => r.status === 200 });
}

export function teardown(data) {
  const after = processMetrics();
  console.log(`gateway after: ${JSON.stringify(after)}`);
  const b = data.before.process_resident_memory_bytes;
  const a = after.process_resident_memory_bytes;
  if (a === undefined) {
    // the gateway died or stopped answering: fail the threshold rather than record nothing
    rssGrowth.add(Number.MAX_SAFE_INTEGER);
    return;
  }
  rssGrowth.add((a - b) / (1024 * 1024));
}
