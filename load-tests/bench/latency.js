// Open-loop latency probe for `MODE=latency load-tests/bench.sh`: a constant arrival rate
// against one URL, then one machine-readable line (milliseconds) that bench.sh parses.
// Env: URL, RATE (requests/s), DURATION, API_KEY, VUS (pre-allocated), MAX_VUS; with JWT
// (a bearer token) and JWT_URL, every other request goes there instead (bench.sh JWT_MIX).
import http from 'k6/http';

const RATE = parseInt(__ENV.RATE || '1000', 10);

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: {
    probe: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: parseInt(__ENV.VUS || '64', 10),
      maxVUs: parseInt(__ENV.MAX_VUS || '256', 10),
      gracefulStop: '5s',
    },
  },
};

const params = { headers: { 'x-api-key': __ENV.API_KEY || '' } };
const jwtParams = { headers: { Authorization: `Bearer ${__ENV.JWT || ''}` } };
const mix = Boolean(__ENV.JWT && __ENV.JWT_URL);

export default function () {
  if (mix && __ITER % 2 === 1) {
    http.get(__ENV.JWT_URL, jwtParams);
  } else {
    http.get(__ENV.URL, params);
  }
}

function metric(data, name, field) {
  const m = data.metrics[name];
  return m && m.values && m.values[field] !== undefined ? m.values[field] : 0;
}

export function handleSummary(data) {
  const line =
    `BENCH_LATENCY rate_target=${RATE}` +
    ` rate_achieved=${metric(data, 'http_reqs', 'rate').toFixed(1)}` +
    ` requests=${metric(data, 'http_reqs', 'count')}` +
    ` dropped=${metric(data, 'dropped_iterations', 'count')}` +
    ` failed_rate=${metric(data, 'http_req_failed', 'rate').toFixed(5)}` +
    ` p50_ms=${metric(data, 'http_req_duration', 'med').toFixed(3)}` +
    ` p90_ms=${metric(data, 'http_req_duration', 'p(90)').toFixed(3)}` +
    ` p99_ms=${metric(data, 'http_req_duration', 'p(99)').toFixed(3)}` +
    ` p999_ms=${metric(data, 'http_req_duration', 'p(99.9)').toFixed(3)}` +
    ` max_ms=${metric(data, 'http_req_duration', 'max').toFixed(3)}\n`;
  return { stdout: line };
}
