// Spike test: a steady base load, a sudden jump to RATE, then back to base. The gateway must
// not fail requests during the spike and must recover: latency after the spike is held to the
// normal p99 target, during the spike to a looser one.
//
//   RATE=4000 DURATION=1m ./load-tests/run-k6.sh spike.js
// Env: RATE [50000] peak rate, BASE_RATE [RATE/10], DURATION [1m] total, VUS [200],
//      MAX_VUS [2000], SPIKE_P99_MS [500], MAX_DROPPED [1% of the planned iterations]: fail
//      when k6 could not start that many requests on time (a spike k6 never delivered).
// Timeline (fractions of DURATION): 20% base, 5% ramp up, 30% peak, 5% ramp down,
// 40% base ("after": the recovery the thresholds check).
import http from 'k6/http';
import { check } from 'k6';
import { ROUTES, envInt, env, seconds, keyHeaders } from './lib/portcullis.js';

const RATE = envInt('RATE', 50000);
const BASE = envInt('BASE_RATE', Math.max(1, Math.floor(RATE / 10)));
const TOTAL = Math.max(10, seconds(env('DURATION', '1m')));
const PHASES = [0.2, 0.05, 0.3, 0.05, 0.4].map((f) => Math.max(1, Math.round(f * TOTAL)));
const SPIKE_START = PHASES[0]; // seconds from the start
const SPIKE_END = PHASES[0] + PHASES[1] + PHASES[2] + PHASES[3];
// iterations the stages plan: base for phases 0 and 4, the peak for 2, the mean of the two
// on the ramps
const PLANNED = BASE * (PHASES[0] + PHASES[4]) + RATE * PHASES[2]
  + ((BASE + RATE) / 2) * (PHASES[1] + PHASES[3]);

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: BASE,
      timeUnit: '1s',
      preAllocatedVUs: envInt('VUS', 200),
      maxVUs: envInt('MAX_VUS', 2000),
      stages: [
        { target: BASE, duration: `${PHASES[0]}s` },
        { target: RATE, duration: `${PHASES[1]}s` },
        { target: RATE, duration: `${PHASES[2]}s` },
        { target: BASE, duration: `${PHASES[3]}s` },
        { target: BASE, duration: `${PHASES[4]}s` },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'], // no failures, spike or not
    'http_req_duration{phase:before}': ['p(99)<150'],
    'http_req_duration{phase:spike}': [`p(99)<${envInt('SPIKE_P99_MS', 500)}`],
    'http_req_duration{phase:after}': ['p(99)<150'], // recovered
    // a spike k6 could only deliver in part proves nothing: at most 1% dropped
    dropped_iterations: [`count<=${envInt('MAX_DROPPED', Math.ceil(PLANNED / 100))}`],
  },
};

export function setup() {
  return { t0: Date.now() };
}

// Half public, half API-key requests, tagged with the phase they were sent in.
export default function (data) {
  const t = (Date.now() - data.t0) / 1000;
  const phase = t < SPIKE_START ? 'before' : t < SPIKE_END ? 'spike' : 'after';
  const id = Math.floor(Math.random() * 1000);
  const res = Math.random() < 0.5
    ? http.get(ROUTES.public(id), { tags: { phase } })
    : http.get(ROUTES.keyed(id), { headers: keyHeaders(), tags: { phase } });
  check(res, { 'status 200': (r) => r.status === 200 });
}
