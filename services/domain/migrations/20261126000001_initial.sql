-- Users, posts and comments. Comments carry the columns the spam and sentiment workers fill in.

CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT        NOT NULL CHECK (char_length(username) BETWEEN 3 AND 32),
    password_hash TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- "Ada" and "ada" are the same account: uniqueness ignores case.
CREATE UNIQUE INDEX users_username_unique ON users (lower(username));

CREATE TABLE posts (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    author_id  BIGINT      NOT NULL REFERENCES users (id),
    title      TEXT        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    body       TEXT        NOT NULL CHECK (char_length(body) BETWEEN 1 AND 20000),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Bumped on every edit; HTTP validators (ETag) derive from it.
    version    INTEGER     NOT NULL DEFAULT 1,
    views      BIGINT      NOT NULL DEFAULT 0
);
-- Ids only grow, so the newest-first listing pages by id (keyset pagination).
CREATE INDEX posts_author_id ON posts (author_id);

CREATE TABLE comments (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    post_id         BIGINT      NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    author_id       BIGINT      NOT NULL REFERENCES users (id),
    body            TEXT        NOT NULL CHECK (char_length(body) BETWEEN 1 AND 2000),
    status          TEXT        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'published', 'rejected')),
    spam_verdict    TEXT        CHECK (spam_verdict IN ('ham', 'spam')),
    spam_score      DOUBLE PRECISION,
    sentiment_score DOUBLE PRECISION CHECK (sentiment_score BETWEEN -1 AND 1),
    sentiment_label TEXT        CHECK (sentiment_label IN ('positive', 'neutral', 'negative')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX comments_published_by_post ON comments (post_id, id) WHERE status = 'published';
CREATE INDEX comments_author_id ON comments (author_id);
