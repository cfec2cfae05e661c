#!/usr/bin/env bash
# `make seed`: fills the database with a realistic data set for browsing and load tests:
# USERS users (password "seed-password"), POSTS posts and COMMENTS published comments.
#
# The first user registers through the running stack's API, so its password hash is a real
# argon2id hash; the others reuse that hash (they share the password), which lets the bulk of
# the data go in with a few set-based SQL statements instead of thousands of requests.
set -euo pipefail

base=${BASE_URL:-http://127.0.0.1:8080}
database_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/scaleout}
users=${USERS:-1000}
posts=${POSTS:-10000}
comments=${COMMENTS:-50000}
template=seed-$(date +%s)

status=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
  -d "{\"username\":\"$template\",\"password\":\"seed-password\"}" "$base/api/v1/auth/register")
if [[ $status != 201 ]]; then
  echo "seed: registering through $base failed ($status); is the stack running (make run)?" >&2
  exit 1
fi

psql "$database_url" -v ON_ERROR_STOP=1 -q <<SQL
BEGIN;
INSERT INTO users (username, password_hash)
SELECT '${template}-' || i, (SELECT password_hash FROM users WHERE username = '$template')
FROM generate_series(1, $users) AS i;

WITH authors AS (SELECT array_agg(id) AS ids FROM users)
INSERT INTO posts (author_id, title, body, created_at, updated_at)
SELECT ids[1 + (i % array_length(ids, 1))],
       'Seeded post ' || i,
       repeat('A paragraph of seeded text for post ' || i || '. ', 1 + i % 20),
       now() - make_interval(mins => $posts - i),
       now() - make_interval(mins => $posts - i)
FROM authors, generate_series(1, $posts) AS i;

WITH authors AS (SELECT array_agg(id) AS ids FROM users),
     recent AS (SELECT array_agg(id) AS ids FROM (SELECT id FROM posts ORDER BY id DESC LIMIT $posts) p)
INSERT INTO comments (post_id, author_id, body, status, spam_verdict, sentiment_score, sentiment_label)
SELECT recent.ids[1 + (i * 7919) % array_length(recent.ids, 1)],
       authors.ids[1 + (i % array_length(authors.ids, 1))],
       CASE i % 3 WHEN 0 THEN 'Great post, thank you!' WHEN 1 THEN 'Not sure I agree.' ELSE 'This is wrong and bad.' END,
       'published', 'ham',
       CASE i % 3 WHEN 0 THEN 0.8 WHEN 1 THEN 0.0 ELSE -0.6 END,
       CASE i % 3 WHEN 0 THEN 'positive' WHEN 1 THEN 'neutral' ELSE 'negative' END
FROM authors, recent, generate_series(1, $comments) AS i;
COMMIT;
SQL
echo "seed: added $users users, $posts posts and $comments comments (password: seed-password)"
