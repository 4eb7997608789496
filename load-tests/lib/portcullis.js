// Shared helpers for the k6 scripts in load-tests/: env, routes, credentials, header checks.
//
// Env (all optional):
//   BASE_URL   gateway under test              [http://127.0.0.1:8080]
//   API_KEY    a key from the config's api_keys [demo-key-1234567890abcdefghijklmnopqrstuv]
//   JWT_SECRET HS256 secret of the "demo" issuer [demo-jwt-secret-change-me]
//   JWT_ISSUER / JWT_AUDIENCE                   [https://demo.portcullis.local/ / api]
//   PATH_PUBLIC, PATH_KEYED, PATH_SECURE, PATH_CACHED, PATH_LIMITED: route prefixes (below)
//   RATE, DURATION: read by each script with its own defaults.
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const API_KEY = __ENV.API_KEY || 'demo-key-1234567890abcdefghijklmnopqrstuv';
export const JWT_SECRET = __ENV.JWT_SECRET || 'demo-jwt-secret-change-me';
export const JWT_ISSUER = __ENV.JWT_ISSUER || 'https://demo.portcullis.local/';
export const JWT_AUDIENCE = __ENV.JWT_AUDIENCE || 'api';

// The routes of the demo config (conf/portcullis.yaml); point them at your own config with
// PATH_PUBLIC, PATH_KEYED, PATH_SECURE, PATH_CACHED, PATH_LIMITED (a prefix; the id is
// appended), e.g. PATH_SECURE=/v1/orders.
function route(name, dflt) {
  const prefix = (__ENV[name] || dflt).replace(/\/+$/, '');
  return (id) => `${BASE_URL}${prefix}/${id}`;
}
export const ROUTES = {
  public: route('PATH_PUBLIC', '/api/users'), // no auth
  keyed: route('PATH_KEYED', '/api/keyed/items'), // auth: { any_of: [api_key] }
  secure: route('PATH_SECURE', '/api/secure/items'), // auth: { any_of: [jwt] }
  cached: route('PATH_CACHED', '/api/cached/items'), // cache: { ttl: ... }
  limited: route('PATH_LIMITED', '/api/limited/items'), // rate_limit: 10 req/s per client
};

export function envInt(name, dflt) {
  const v = parseInt(__ENV[name] || '', 10);
  return Number.isFinite(v) && v > 0 ? v : dflt;
}

export function env(name, dflt) {
  return __ENV[name] || dflt;
}

// Duration string (30s, 2m, 1h, 500ms) to seconds.
export function seconds(d) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(String(d).trim());
  if (!m) return 0;
  const n = parseFloat(m[1]);
  return { ms: n / 1000, s: n, m: n * 60, h: n * 3600 }[m[2] || 's'];
}

function b64url(s) {
  return encoding.b64encode(s, 'rawurl');
}

// An HS256 JWT signed with `secret` (default JWT_SECRET). `claims` are merged over
// iss/aud/sub/iat/nbf/exp defaults.
export function signJwt(claims = {}, secret = JWT_SECRET) {
  const now = Math.floor(Date.now() / 1000);
  const payload = Object.assign(
    { iss: JWT_ISSUER, aud: JWT_AUDIENCE, sub: 'k6-user', iat: now, nbf: now - 5, exp: now + 3600 },
    claims,
  );
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(payload));
  const sig = crypto.hmac('sha256', secret, `${head}.${body}`, 'base64rawurl');
  return `${head}.${body}.${sig}`;
}

export function keyHeaders(key = API_KEY) {
  return { 'x-api-key': key };
}

export function bearerHeaders(token) {
  return { Authorization: `Bearer ${token}` };
}

// Case-insensitive response header lookup (k6 canonicalises names: X-Ratelimit-Limit).
export function header(res, name) {
  if (!res || !res.headers) return undefined;
  const want = name.toLowerCase();
  for (const k of Object.keys(res.headers)) {
    if (k.toLowerCase() === want) return res.headers[k];
  }
  return undefined;
}

export function isInt(v) {
  return v !== undefined && /^\d+$/.test(String(v).trim());
}

// A JSON error body of the gateway's one shape: {"error", "message", "request_id"}
// (and `error` equal to `code` when one is given).
export function isGatewayError(res, code) {
  try {
    const b = res.json();
    return !!b && typeof b.error === 'string' && (code === undefined || b.error === code) &&
      typeof b.message === 'string' && typeof b.request_id === 'string';
  } catch (e) {
    return false;
  }
}

// A random-ish suffix so cache keys and client ids are fresh on every run.
export function runId() {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
}
