// Load test: a constant arrival rate (open loop: k6 starts RATE requests per second whether
// or not earlier ones have finished) over a mix of the demo's 200-answering routes.
// Passes if p99 < 150 ms and fewer than 0.1% of requests fail (DESIGN.md targets).
//
//   RATE=5000 DURATION=30s ./load-tests/run-k6.sh load.js
// Env: RATE [50000], DURATION [30s], VUS [200] pre-allocated, MAX_VUS [2000],
//      MAX_DROPPED [1% of RATE × DURATION]: fail when k6 had to drop more than this many
//      iterations, i.e. when the generator or the gateway could not keep the rate. Without
//      it a run that delivered a fraction of RATE would pass on the latency of what it sent.
// On a 2-core box shared with the gateway, k6 tops out far below 50k rps: watch
// `dropped_iterations` in the summary (see load-tests/README.md).
import http from 'k6/http';
import { check } from 'k6';
import { ROUTES, envInt, env, seconds, signJwt, keyHeaders, bearerHeaders } from './lib/portcullis.js';

const RATE = envInt('RATE', 50000);
// at most 1% of the planned iterations may be dropped (k6 counts one per request it could
// not start on time): a run held at 90% of RATE fails
const PLANNED = RATE * seconds(env('DURATION', '30s'));
const thresholds = {
  http_req_duration: ['p(99)<150'], // ms, all requests
  http_req_failed: ['rate<0.001'], // non-2xx/3xx or transport errors
  dropped_iterations: [`count<=${envInt('MAX_DROPPED', Math.ceil(PLANNED / 100))}`],
};

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: {
    load: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: env('DURATION', '30s'),
      preAllocatedVUs: envInt('VUS', 200),
      maxVUs: envInt('MAX_VUS', 2000),
    },
  },
  thresholds,
};

// A small pool of tokens signed once: the gateway's verified-token cache sees repeat tokens,
// as it would with real clients.
export function setup() {
  const tokens = [];
  for (let i = 0; i < envInt('JWT_POOL', 50); i++) tokens.push(signJwt({ sub: `k6-load-${i}` }));
  return { tokens };
}

// 40% public, 30% API key, 20% JWT, 10% cached.
export default function (data) {
  const n = Math.random();
  const id = Math.floor(Math.random() * 1000);
  let res;
  if (n < 0.4) {
    res = http.get(ROUTES.public(id), { tags: { route: 'public' } });
  } else if (n < 0.7) {
    res = http.get(ROUTES.keyed(id), { headers: keyHeaders(), tags: { route: 'api_key' } });
  } else if (n < 0.9) {
    const token = data.tokens[id % data.tokens.length];
    res = http.get(ROUTES.secure(id), { headers: bearerHeaders(token), tags: { route: 'jwt' } });
  } else {
    res = http.get(ROUTES.cached(id % 100), { tags: { route: 'cached' } });
  }
  check(res, { 'status 200': (r) => r.status === 200 });
}
