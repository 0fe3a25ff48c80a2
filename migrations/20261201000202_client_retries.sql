-- Client retries (the same idempotency key) answered from a run without calling
-- the API again: counted from `client_retried` events, shown on the run's page.
ALTER TABLE runs ADD COLUMN client_retries integer NOT NULL DEFAULT 0;
