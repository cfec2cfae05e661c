-- The comment pipeline's two tables: the transactional outbox the relay drains, and the inbox
-- that makes the workers' effects happen once per message.

-- One row per event to publish, written in the same transaction as the change it announces,
-- so an event exists if and only if its change committed.
CREATE TABLE outbox (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The AMQP message_id: consumers deduplicate on it, so a republished row changes nothing.
    event_id      UUID        NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    -- Also the routing key on the `comments` topic exchange, e.g. `comment.submitted`.
    event_type    TEXT        NOT NULL,
    payload       JSONB       NOT NULL,
    -- W3C trace context of the request that wrote the row, carried into the message headers.
    traceparent   TEXT,
    tracestate    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set once the broker has confirmed the message; NULL means "still to publish".
    published_at  TIMESTAMPTZ,
    attempts      INTEGER     NOT NULL DEFAULT 0,
    last_error    TEXT
);
-- The relay's only query walks this small index: unpublished rows, oldest first.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wakes the relay (LISTEN outbox) when a transaction that wrote events commits. Postgres
-- delivers notifications only on commit and folds identical ones of a transaction together.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Messages a consumer has applied. A worker inserts here in the same transaction as its effect;
-- a redelivered message finds its row and changes nothing.
CREATE TABLE inbox (
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
