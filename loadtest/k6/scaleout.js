// k6 load scenarios for scaleout, run against the gateway of a running stack (`make run`).
//
//   k6 run loadtest/k6/scaleout.js                       # the mixed scenario (all five at once)
//   SCENARIO=anonymous k6 run loadtest/k6/scaleout.js    # one of: anonymous, logged_in,
//                                                        # posting, comment_storm, mobile, mixed
//   BASE_URL=http://127.0.0.1:8080 DURATION=30s RATE=200 k6 run ...
//
// Thresholds (error rate, p95, p99) fail the run when missed. Reads follow a Zipf law over the
// posts, so a few posts are hot and most are cold, as on a real site.

import http from 'k6/http';
import { check, fail } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const API = `${BASE}/api/v1`;
const DURATION = __ENV.DURATION || '30s';
const RATE = Number(__ENV.RATE || 100); // requests per second of the mixed total
const USERS = Number(__ENV.USERS || 10);
const ZIPF_S = Number(__ENV.ZIPF_S || 1.1);
const SCENARIO = __ENV.SCENARIO || 'mixed';

// Share of the total rate each scenario gets in the mixed run: reading dominates, as it does.
const MIX = { anonymous: 0.55, logged_in: 0.15, mobile: 0.2, posting: 0.02, comment_storm: 0.08 };

function arrival(name, share) {
  return {
    executor: 'constant-arrival-rate',
    exec: name,
    rate: Math.max(1, Math.round(RATE * share)),
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: 20,
    maxVUs: 200,
    tags: { scenario: name },
  };
}

const scenarios = {};
for (const [name, share] of Object.entries(MIX)) {
  if (SCENARIO === 'mixed' || SCENARIO === name) {
    scenarios[name] = arrival(name, SCENARIO === 'mixed' ? share : 1);
  }
}
if (Object.keys(scenarios).length === 0) {
  throw new Error(`unknown SCENARIO ${SCENARIO}; use one of ${Object.keys(MIX).join(', ')} or mixed`);
}

export const options = {
  scenarios,
  discardResponseBodies: false,
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{kind:read}': ['p(95)<100', 'p(99)<250'],
    'http_req_duration{kind:write}': ['p(95)<250', 'p(99)<500'],
    checks: ['rate>0.99'],
  },
};

const json = { headers: { 'Content-Type': 'application/json' } };

function bearer(token) {
  return { headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` } };
}

// Registers USERS accounts, logs them in, and collects the ids of the newest posts.
export function setup() {
  const run = Date.now().toString(36);
  const tokens = [];
  for (let i = 0; i < USERS; i++) {
    const credentials = JSON.stringify({ username: `k6-${run}-${i}`, password: 'load-test-password' });
    const registered = http.post(`${API}/auth/register`, credentials, json);
    if (registered.status !== 201) fail(`registration failed: ${registered.status} ${registered.body}`);
    const login = http.post(`${API}/auth/login`, credentials, json);
    if (login.status !== 200) fail(`login failed: ${login.status} ${login.body}`);
    tokens.push(login.json('token'));
  }
  let ids = [];
  let cursor = null;
  while (ids.length < 1000) {
    const page = http.get(`${API}/posts?limit=100${cursor ? `&cursor=${cursor}` : ''}`);
    if (page.status !== 200) fail(`listing posts failed: ${page.status}`);
    ids = ids.concat(page.json('items').map((p) => p.id));
    cursor = page.json('next_cursor');
    if (!cursor) break;
  }
  if (ids.length === 0) {
    // An empty site: give the readers something to read.
    for (let i = 0; i < 50; i++) {
      const created = http.post(`${API}/posts`, JSON.stringify({ title: `Post ${i}`, body: 'Seeded by k6.' }), bearer(tokens[0]));
      ids.push(created.json('id'));
    }
  }
  // The cumulative distribution of a Zipf law over the posts, newest most popular.
  const weights = ids.map((_, k) => 1 / Math.pow(k + 1, ZIPF_S));
  const total = weights.reduce((a, b) => a + b, 0);
  let sum = 0;
  const cdf = weights.map((w) => (sum += w / total));
  return { tokens, ids, cdf };
}

function zipfPost(data) {
  const u = Math.random();
  let lo = 0;
  let hi = data.cdf.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (data.cdf[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return data.ids[lo];
}

function anyToken(data) {
  return data.tokens[Math.floor(Math.random() * data.tokens.length)];
}

export function anonymous(data) {
  const front = Math.random() < 0.2;
  const res = front
    ? http.get(`${BASE}/`, { tags: { kind: 'read', name: 'GET /' } })
    : http.get(`${BASE}/posts/${zipfPost(data)}`, { tags: { kind: 'read', name: 'GET /posts/{id}' } });
  check(res, { 'page 200': (r) => r.status === 200 });
}

export function logged_in(data) {
  // The API token is the same session id the web takes as its cookie.
  const params = { cookies: { sid: anyToken(data) }, tags: { kind: 'read', name: 'GET /posts/{id} (signed in)' } };
  const res = http.get(`${BASE}/posts/${zipfPost(data)}`, params);
  check(res, {
    'page 200': (r) => r.status === 200,
    'signed in': (r) => r.body.includes('Signed in as'),
  });
}

export function mobile(data) {
  const res = Math.random() < 0.3
    ? http.get(`${API}/posts?limit=20`, { tags: { kind: 'read', name: 'GET /api/v1/posts' } })
    : http.get(`${API}/posts/${zipfPost(data)}`, { tags: { kind: 'read', name: 'GET /api/v1/posts/{id}' } });
  check(res, { 'api 200': (r) => r.status === 200 });
}

export function posting(data) {
  const body = JSON.stringify({ title: `Load test ${Date.now()}`, body: 'Written by the posting scenario.' });
  const res = http.post(`${API}/posts`, body, Object.assign(bearer(anyToken(data)), { tags: { kind: 'write', name: 'POST /api/v1/posts' } }));
  check(res, { 'post 201': (r) => r.status === 201 });
}

export function comment_storm(data) {
  const body = JSON.stringify({ body: Math.random() < 0.5 ? 'What a great post, thanks!' : 'I disagree, this is wrong.' });
  const res = http.post(`${API}/posts/${zipfPost(data)}/comments`, body,
    Object.assign(bearer(anyToken(data)), { tags: { kind: 'write', name: 'POST /api/v1/posts/{id}/comments' } }));
  check(res, { 'comment 202': (r) => r.status === 202 });
}
