-- What `Last-Modified` of the pages showing comments derives from. A visible comment changes
-- twice: when the spam check publishes it (`moderated_at`) and when its sentiment lands
-- (`scored_at`, which may come before or after the verdict).
ALTER TABLE comments ADD COLUMN scored_at TIMESTAMPTZ;

-- The listing counts each post's published comments and takes the newest publication time in
-- one pass over this index; with `moderated_at` in it, that stays an index-only scan as the
-- count alone was.
DROP INDEX comments_published_by_post;
CREATE INDEX comments_published_by_post ON comments (post_id, id) INCLUDE (moderated_at)
    WHERE status = 'published';
