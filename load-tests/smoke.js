// Smoke test: every route kind of the demo config once, checking statuses and the headers
// the gateway promises (X-Request-Id, WWW-Authenticate, X-Cache, X-RateLimit-*, RateLimit-*,
// Retry-After, the JSON error body). One VU, one iteration; fails if any check fails.
//
//   ./load-tests/run-k6.sh smoke.js
//   BASE_URL=http://127.0.0.1:8080 API_KEY=... JWT_SECRET=... k6 run load-tests/smoke.js
import http from 'k6/http';
import { check, group } from 'k6';
import {
  ROUTES, BASE_URL, API_KEY, signJwt, keyHeaders, bearerHeaders, header, isInt,
  isGatewayError, runId,
} from './lib/portcullis.js';

export const options = {
  vus: 1,
  iterations: 1,
  thresholds: {
    checks: ['rate==1'], // every check below must pass
  },
};

// 4xx answers are expected here; only transport errors and 5xx count as failed requests.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 499 }));

const RUN = runId();

function hasRequestId(res) {
  const id = header(res, 'X-Request-Id');
  return id !== undefined && id.length > 0;
}

function jsonError(res, status) {
  return (
    res.status === status &&
    String(header(res, 'Content-Type') || '').startsWith('application/json') &&
    hasRequestId(res)
  );
}

export default function () {
  group('public route', () => {
    const res = http.get(ROUTES.public(42));
    check(res, {
      'public: 200': (r) => r.status === 200,
      'public: X-Request-Id': hasRequestId,
    });
    const mine = `k6-smoke-${RUN}`;
    const echoed = http.get(ROUTES.public(43), { headers: { 'X-Request-Id': mine } });
    check(echoed, {
      'public: a valid incoming X-Request-Id is kept': (r) => header(r, 'X-Request-Id') === mine,
    });
  });

  group('no route', () => {
    const res = http.get(`${BASE_URL}/no-such-route-${RUN}`);
    check(res, {
      'no route: 404 JSON error with X-Request-Id': (r) => jsonError(r, 404),
      'no route: error body shape, request_id = X-Request-Id': (r) =>
        isGatewayError(r) && r.json().request_id === header(r, 'X-Request-Id'),
    });
  });

  group('API key route', () => {
    const none = http.get(ROUTES.keyed(1));
    check(none, {
      'api key: missing -> 401 JSON': (r) => jsonError(r, 401),
      'api key: missing -> WWW-Authenticate without error code': (r) => {
        const w = String(header(r, 'WWW-Authenticate') || '');
        return w.startsWith('Bearer realm="portcullis"') && !w.includes('error=');
      },
    });
    const wrong = http.get(ROUTES.keyed(1), { headers: keyHeaders(`wrong-${API_KEY}`) });
    check(wrong, {
      'api key: wrong -> 401 invalid_token': (r) =>
        jsonError(r, 401) && String(header(r, 'WWW-Authenticate') || '').includes('error="invalid_token"'),
    });
    const ok = http.get(ROUTES.keyed(1), { headers: keyHeaders() });
    check(ok, {
      'api key: valid -> 200': (r) => r.status === 200,
      'api key: X-Request-Id': hasRequestId,
    });
  });

  group('JWT route', () => {
    const none = http.get(ROUTES.secure(1));
    check(none, {
      'jwt: missing -> 401 with WWW-Authenticate': (r) =>
        jsonError(r, 401) && String(header(r, 'WWW-Authenticate') || '').startsWith('Bearer realm="portcullis"'),
    });
    const forged = http.get(ROUTES.secure(1), {
      headers: bearerHeaders(signJwt({ sub: `k6-smoke-${RUN}` }, 'not-the-secret')),
    });
    check(forged, {
      'jwt: bad signature -> 401 invalid_token': (r) =>
        jsonError(r, 401) && String(header(r, 'WWW-Authenticate') || '').includes('error="invalid_token"'),
    });
    const now = Math.floor(Date.now() / 1000);
    const expired = http.get(ROUTES.secure(1), {
      headers: bearerHeaders(signJwt({ sub: `k6-smoke-${RUN}`, iat: now - 7200, nbf: now - 7200, exp: now - 3600 })),
    });
    check(expired, { 'jwt: expired -> 401': (r) => r.status === 401 });
    const wrongAud = http.get(ROUTES.secure(1), {
      headers: bearerHeaders(signJwt({ sub: `k6-smoke-${RUN}`, aud: 'someone-else' })),
    });
    check(wrongAud, { 'jwt: wrong audience -> 401': (r) => r.status === 401 });
    const ok = http.get(ROUTES.secure(1), { headers: bearerHeaders(signJwt({ sub: `k6-smoke-${RUN}` })) });
    check(ok, {
      'jwt: valid -> 200': (r) => r.status === 200,
      'jwt: X-Request-Id': hasRequestId,
    });
  });

  group('cached route', () => {
    const url = ROUTES.cached(`smoke-${RUN}`); // a key no earlier run has filled
    const first = http.get(url);
    const second = http.get(url);
    check(first, {
      'cache: first 200': (r) => r.status === 200,
      'cache: first X-Cache MISS': (r) => String(header(r, 'X-Cache') || '').toUpperCase() === 'MISS',
    });
    check(second, {
      'cache: second 200': (r) => r.status === 200,
      'cache: second X-Cache HIT': (r) => String(header(r, 'X-Cache') || '').toUpperCase() === 'HIT',
      'cache: same body': (r) => r.body === first.body,
    });
  });

  group('rate-limited route', () => {
    // 10 req/s per client: 15 back-to-back requests must see some 429s.
    const responses = [];
    for (let i = 0; i < 15; i++) {
      responses.push(http.get(ROUTES.limited(i)));
    }
    const ok = responses.filter((r) => r.status === 200);
    const limited = responses.filter((r) => r.status === 429);
    check(responses, {
      'ratelimit: some 200s': () => ok.length > 0,
      'ratelimit: some 429s': () => limited.length > 0,
      'ratelimit: only 200 or 429': (rs) => rs.every((r) => r.status === 200 || r.status === 429),
      'ratelimit: X-RateLimit-Limit/Remaining/Reset on every response': (rs) =>
        rs.every((r) => isInt(header(r, 'X-RateLimit-Limit')) && isInt(header(r, 'X-RateLimit-Remaining')) &&
          isInt(header(r, 'X-RateLimit-Reset'))),
      'ratelimit: RateLimit-Policy and RateLimit on every response': (rs) =>
        rs.every((r) => header(r, 'RateLimit-Policy') !== undefined && header(r, 'RateLimit') !== undefined),
      'ratelimit: X-RateLimit-Limit is 10': (rs) => rs.every((r) => String(header(r, 'X-RateLimit-Limit')).trim() === '10'),
      'ratelimit: Remaining never rises within the window': () => {
        const rem = ok.map((r) => parseInt(header(r, 'X-RateLimit-Remaining'), 10));
        return rem.every((v, i) => i === 0 || v <= rem[i - 1]);
      },
    });
    if (limited.length > 0) {
      check(limited[0], {
        'ratelimit: 429 has Retry-After (delta seconds)': (r) => isInt(header(r, 'Retry-After')),
        'ratelimit: 429 Remaining is 0': (r) => String(header(r, 'X-RateLimit-Remaining')).trim() === '0',
        'ratelimit: 429 JSON error body': (r) => jsonError(r, 429) && isGatewayError(r),
      });
    }
  });
}
