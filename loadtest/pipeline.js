// k6 scenario for the comment pipeline: POST /api/v1/posts/{id}/comments as fast as asked.
//
// Environment: BASE_URL, TOKEN (a bearer session), POST_ID, and either RATE + DURATION
// (constant arrival rate, for throughput and latency) or ITERATIONS + VUS (a fixed number of
// submissions, for the drill). SPAM_EVERY=n makes every n-th comment obvious spam.
import http from 'k6/http';
import { Counter } from 'k6/metrics';

const accepted = new Counter('accepted');
const refused = new Counter('refused');
// Why submissions were refused: 5xx answers, other answers, and no answer at all (timeouts,
// connection errors, status 0).
const refused5xx = new Counter('refused_5xx');
const refusedOther = new Counter('refused_other');
const unanswered = new Counter('unanswered');

const base = __ENV.BASE_URL;
const headers = {
  'content-type': 'application/json',
  authorization: `Bearer ${__ENV.TOKEN}`,
};
const spamEvery = Number(__ENV.SPAM_EVERY || 0);

export const options = __ENV.ITERATIONS
  ? {
      scenarios: {
        drill: {
          executor: 'shared-iterations',
          vus: Number(__ENV.VUS || 8),
          iterations: Number(__ENV.ITERATIONS),
          maxDuration: __ENV.MAX_DURATION || '10m',
        },
      },
    }
  : {
      scenarios: {
        rate: {
          executor: 'constant-arrival-rate',
          rate: Number(__ENV.RATE || 500),
          timeUnit: '1s',
          duration: __ENV.DURATION || '20s',
          preAllocatedVUs: Number(__ENV.VUS || 64),
          maxVUs: Number(__ENV.MAX_VUS || 256),
        },
      },
    };

export default function () {
  const n = __ITER;
  const body =
    spamEvery > 0 && n % spamEvery === 0
      ? 'CLICK HERE to claim your FREE money!!! Limited offer, act now, no credit check!'
      : `Thanks for the post, it was a good read. (${__VU}-${n})`;
  const res = http.post(`${base}/api/v1/posts/${__ENV.POST_ID}/comments`, JSON.stringify({ body }), {
    headers,
    timeout: '10s',
  });
  if (res.status === 202) {
    accepted.add(1);
  } else {
    refused.add(1);
    if (res.status === 0) unanswered.add(1);
    else if (res.status >= 500) refused5xx.add(1);
    else refusedOther.add(1);
  }
}
