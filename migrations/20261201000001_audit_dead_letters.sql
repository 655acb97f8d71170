-- Audit records PostgreSQL refused for their content (not for being
-- unavailable): kept here, as JSON bytes, so that one bad record never
-- stops the writer and none is lost without trace.
CREATE TABLE audit_dead_letters (
    id            BIGSERIAL PRIMARY KEY,
    at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    request_uid   TEXT NOT NULL,
    record        BYTEA NOT NULL,
    error         TEXT NOT NULL
);
