-- When the spam check moved a comment out of `pending`: with `created_at` (when it was accepted)
-- it gives each comment's moderation latency, which the pipeline benchmark reports.
ALTER TABLE comments ADD COLUMN moderated_at TIMESTAMPTZ;
