// Auth mix: JWT, API-key and anonymous clients at once, plus a trickle of bad credentials.
// Checks that every kind gets the right answer under load and that auth does not blow the
// latency budget for any kind (thresholds per kind, via the `auth` tag).
//
//   RATE=2000 DURATION=30s ./load-tests/run-k6.sh auth-mix.js
// Env: RATE [2000], DURATION [30s], VUS [100], MAX_VUS [1000],
//      JWT_SHARE [0.4], KEY_SHARE [0.4] (the rest is anonymous), BAD_SHARE [0.02],
//      JWT_POOL [100] distinct tokens signed in setup(),
//      FRESH_JWT [0]: 1 signs a new token per request (defeats the gateway's verified-token
//      cache, so every request pays a signature check; k6 pays an HMAC per request too).
// The JWT is HS256, signed here with k6/crypto HMAC + k6/encoding base64url from JWT_SECRET.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { ROUTES, API_KEY, envInt, env, signJwt, keyHeaders, bearerHeaders, header } from './lib/portcullis.js';

const JWT_SHARE = parseFloat(env('JWT_SHARE', '0.4'));
const KEY_SHARE = parseFloat(env('KEY_SHARE', '0.4'));
const BAD_SHARE = parseFloat(env('BAD_SHARE', '0.02'));
const FRESH_JWT = env('FRESH_JWT', '0') === '1';
const byKind = new Counter('auth_requests');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    mix: {
      executor: 'constant-arrival-rate',
      rate: envInt('RATE', 2000),
      timeUnit: '1s',
      duration: env('DURATION', '30s'),
      preAllocatedVUs: envInt('VUS', 100),
      maxVUs: envInt('MAX_VUS', 1000),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'], // an expected 401 is not a failure (per-request callback)
    http_req_duration: ['p(99)<150'],
    'http_req_duration{auth:jwt}': ['p(99)<150'],
    'http_req_duration{auth:api_key}': ['p(99)<150'],
    'http_req_duration{auth:anonymous}': ['p(99)<150'],
    'http_req_duration{auth:bad}': ['p(99)<150'],
    checks: ['rate>0.999'],
  },
};

export function setup() {
  const tokens = [];
  for (let i = 0; i < envInt('JWT_POOL', 100); i++) tokens.push(signJwt({ sub: `k6-mix-${i}` }));
  return { tokens };
}

const expect401 = { responseCallback: http.expectedStatuses(401) };

export default function (data) {
  const id = Math.floor(Math.random() * 1000);
  if (Math.random() < BAD_SHARE) {
    // Bad credentials: a forged JWT or an unknown key. Must be 401 invalid_token, quickly.
    const forged = Math.random() < 0.5;
    const res = forged
      ? http.get(ROUTES.secure(id), Object.assign({ headers: bearerHeaders(signJwt({ sub: 'mallory' }, 'wrong-secret')), tags: { auth: 'bad' } }, expect401))
      : http.get(ROUTES.keyed(id), Object.assign({ headers: keyHeaders(`x${API_KEY}`), tags: { auth: 'bad' } }, expect401));
    byKind.add(1, { auth: 'bad' });
    check(res, {
      'bad credentials -> 401 invalid_token': (r) =>
        r.status === 401 && String(header(r, 'WWW-Authenticate') || '').includes('error="invalid_token"'),
    });
    return;
  }
  const n = Math.random();
  let res;
  if (n < JWT_SHARE) {
    const token = FRESH_JWT ? signJwt({ sub: `k6-mix-${id}`, jti: `${__VU}-${__ITER}` }) : data.tokens[id % data.tokens.length];
    res = http.get(ROUTES.secure(id), { headers: bearerHeaders(token), tags: { auth: 'jwt' } });
    byKind.add(1, { auth: 'jwt' });
  } else if (n < JWT_SHARE + KEY_SHARE) {
    res = http.get(ROUTES.keyed(id), { headers: keyHeaders(), tags: { auth: 'api_key' } });
    byKind.add(1, { auth: 'api_key' });
  } else {
    res = http.get(ROUTES.public(id), { tags: { auth: 'anonymous' } });
    byKind.add(1, { auth: 'anonymous' });
  }
  check(res, { 'authorised -> 200': (r) => r.status === 200 });
}
