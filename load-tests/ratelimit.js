// Rate limit under load: one client sends RATE requests/s at a route limited to LIMIT per
// second. Checks that the share of 429s is what the limit implies (1 - LIMIT/RATE, with the
// admitted rate within TOLERANCE of LIMIT) and that every answer carries correct rate-limit
// headers.
//
//   ./load-tests/run-k6.sh ratelimit.js
// Env: RATE [50], DURATION [20s], LIMIT [10] (the route's requests per second),
//      TOLERANCE [0.1] (relative, on the admitted rate: LIMIT × (1 ± TOLERANCE)), MAX_DROPPED
//      [1% of RATE × DURATION], API_KEY (sent so the client is the key's
//      id whether the route keys clients by identity or by IP).
import http from 'k6/http';
import { check } from 'k6';
import { Rate, Counter } from 'k6/metrics';
import { ROUTES, envInt, env, seconds, keyHeaders, header, isInt, isGatewayError } from './lib/portcullis.js';

const RATE = envInt('RATE', 50);
const LIMIT = envInt('LIMIT', 10);
const TOL = parseFloat(env('TOLERANCE', '0.1'));
const EXPECTED = Math.max(0, 1 - LIMIT / RATE);
// The tolerance is on the admitted rate, not the 429 share: at RATE 50 and LIMIT 10 an
// absolute ±0.1 on the share (0.7..0.9) let through 5..15 admitted per second, ±50% of the
// limit, so a limiter admitting 1.5× passed. Admitting LIMIT × (1 ± TOL) means a share of
// 1 - LIMIT × (1 ± TOL) / RATE: 0.78..0.82 by default, which 1.5× (0.70) fails.
const SHARE_TOL = (TOL * LIMIT) / RATE;
const PLANNED = RATE * seconds(env('DURATION', '20s'));

const limitedShare = new Rate('ratelimited'); // share of answers that were 429
const allowed = new Counter('allowed'); // 200s

export const options = {
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    one_client: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: env('DURATION', '20s'),
      preAllocatedVUs: envInt('VUS', 20),
      maxVUs: envInt('MAX_VUS', 200),
    },
  },
  thresholds: {
    ratelimited: [`rate>=${Math.max(0, EXPECTED - SHARE_TOL).toFixed(4)}`, `rate<=${Math.min(1, EXPECTED + SHARE_TOL).toFixed(4)}`],
    // the share is only meaningful at the rate asked for
    dropped_iterations: [`count<=${envInt('MAX_DROPPED', Math.ceil(PLANNED / 100))}`],
    checks: ['rate>0.999'],
    http_req_failed: ['rate<0.001'], // 429 is expected here, see the callback below
    http_req_duration: ['p(99)<150'],
  },
};

http.setResponseCallback(http.expectedStatuses(200, 429));

export default function () {
  const res = http.get(ROUTES.limited(Math.floor(Math.random() * 1000)), { headers: keyHeaders() });
  limitedShare.add(res.status === 429);
  if (res.status === 200) allowed.add(1);
  check(res, {
    '200 or 429': (r) => r.status === 200 || r.status === 429,
    [`X-RateLimit-Limit = ${LIMIT}`]: (r) => String(header(r, 'X-RateLimit-Limit') || '').trim() === String(LIMIT),
    'X-RateLimit-Remaining in [0, limit]': (r) => {
      const v = header(r, 'X-RateLimit-Remaining');
      return isInt(v) && parseInt(v, 10) <= LIMIT;
    },
    'X-RateLimit-Reset is delta seconds': (r) => isInt(header(r, 'X-RateLimit-Reset')),
    'RateLimit-Policy names the policy': (r) => /^"[^"]+";q=\d+;w=\d+/.test(String(header(r, 'RateLimit-Policy') || '')),
    'RateLimit has r and t': (r) => /;r=\d+/.test(String(header(r, 'RateLimit') || '')) && /;t=\d+/.test(String(header(r, 'RateLimit') || '')),
    'X-Request-Id': (r) => !!header(r, 'X-Request-Id'),
  });
  if (res.status === 429) {
    check(res, {
      '429: Retry-After is delta seconds': (r) => isInt(header(r, 'Retry-After')),
      '429: Remaining is 0': (r) => String(header(r, 'X-RateLimit-Remaining')).trim() === '0',
      '429: JSON error body': (r) => isGatewayError(r),
    });
  }
}

export function handleSummary(data) {
  const share = data.metrics.ratelimited ? data.metrics.ratelimited.values.rate : 0;
  const ok = data.metrics.allowed ? data.metrics.allowed.values.count : 0;
  const line = `ratelimit: ${(share * 100).toFixed(1)}% answered 429 (expected ${(EXPECTED * 100).toFixed(1)}% +/- ${(TOL * 100).toFixed(0)} points), ${ok} allowed at ${RATE} rps against ${LIMIT}/s\n`;
  return { stdout: line + textSummary(data) };
}

// k6's default end-of-test summary is replaced by handleSummary; keep a short one.
function textSummary(data) {
  const out = [];
  for (const [name, m] of Object.entries(data.metrics)) {
    const th = m.thresholds ? Object.entries(m.thresholds).map(([k, v]) => `${v.ok ? 'ok' : 'FAILED'} ${k}`).join(', ') : '';
    const vals = Object.entries(m.values).map(([k, v]) => `${k}=${typeof v === 'number' ? +v.toFixed(3) : v}`).join(' ');
    out.push(`  ${name}: ${vals}${th ? `  [${th}]` : ''}`);
  }
  return out.join('\n') + '\n';
}
