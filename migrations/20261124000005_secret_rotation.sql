-- During an HMAC secret rotation the previous secret keeps signing (as a second
-- signature) until it expires, so receivers can switch without a gap.
ALTER TABLE tools
    ADD COLUMN auth_secret_previous_ciphertext bytea,
    ADD COLUMN auth_secret_previous_expires_at timestamptz;
