-- A finer latency histogram per hourly usage row, for percentiles (p50, p95) that
-- stay fast however many runs there are: calls by latency in log-spaced buckets,
-- bucket i holding latencies in (1.1^(i-1), 1.1^i] ms (bucket 0: up to 1 ms; the
-- last bucket: everything longer). 160 buckets reach about an hour, each within
-- 10 % of its neighbours. The bucket rule lives in
-- services/projector/src/history/usage.rs (`latency_bucket`).
-- Rows counted before this migration keep an empty histogram (no percentile for
-- those hours until a rebuild recounts them).
ALTER TABLE usage_hourly ADD COLUMN latency_histogram bigint[] NOT NULL DEFAULT '{}';
