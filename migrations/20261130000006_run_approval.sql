-- The operator approval of a run whose tool has `approval: operator`:
-- {"state": pending|approved|rejected|expired, "expires_at", "by", "reason", "decided_at"}.
-- A parked run's status is 'awaiting_approval' until it runs or is refused.
ALTER TABLE runs ADD COLUMN approval jsonb;
