#!/usr/bin/env bash
# The comment pipeline's fault drill (not part of `make test`): 10,000 submissions through the
# API while RabbitMQ is stopped and started again (`rabbitmqctl stop_app` / `start_app`, for
# OUTAGE seconds, once SUBMISSIONS/3 comments are in). Then it waits for the pipeline to drain
# and prints attempted, accepted, published, lost and duplicated.
#
#   attempted   submissions sent
#   accepted    answered 202
#   published   accepted comments that both workers processed (verdict and sentiment stored)
#   lost        accepted comments that never got there
#   duplicated  raw: deliveries a worker found already in its inbox (broker redeliveries or
#               republished rows); effects: inbox rows for one message twice (must be 0)
#
# WARNING: it stops the machine's RabbitMQ for a few seconds; other users of it notice.
source "$(dirname "$0")/pipeline-stack.sh"

total=${SUBMISSIONS:-10000}
outage=${OUTAGE:-5}
(
  while (($(sql "SELECT count(*) FROM comments") < total / 3)); do sleep 0.2; done
  echo "pipeline: stopping RabbitMQ for ${outage}s" >&2
  rabbitmqctl -q stop_app
  sleep "$outage"
  rabbitmqctl -q start_app
  echo "pipeline: RabbitMQ is back" >&2
) &
fault=$!

ITERATIONS=$total VUS=${VUS:-8} k6 run -q --summary-export "$RUN_DIR/drill.json" loadtest/pipeline.js >/dev/null 2>&1 || true
wait "$fault"
read -r attempted accepted < <(python3 -c "import json; m=json.load(open('$RUN_DIR/drill.json'))['metrics']; \
  print(int(m['iterations']['count']), int(m.get('accepted',{}).get('count',0)))")
drained=yes
wait_drained 180 || drained=no
published=$(sql "SELECT count(*) FROM comments WHERE status <> 'pending' AND sentiment_label IS NOT NULL")
stored=$(sql "SELECT count(*) FROM comments")
dup_effects=$(sql "SELECT count(*) FROM (SELECT 1 FROM inbox GROUP BY consumer, message_id HAVING count(*) > 1) d")
dup_raw=$(cat "$RUN_DIR/spam.log" "$RUN_DIR/sentiment.log" | grep -c '"duplicate":true' || true)
republished=$(sql "SELECT count(*) FROM outbox WHERE attempts > 1")
echo "attempted:  $attempted"
echo "accepted:   $accepted"
echo "stored:     $stored"
echo "published:  $published"
echo "lost:       $((accepted - published))"
echo "duplicated: $dup_raw raw deliveries, $dup_effects effects (outbox rows sent more than once: $republished)"
echo "drained:    $drained"
