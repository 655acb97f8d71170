-- The audit trail (K-AU-1): one row per request, and append-only events for
-- every transition, decision and action.
CREATE TABLE remediation_requests (
    uid           TEXT PRIMARY KEY,
    namespace     TEXT NOT NULL,
    name          TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    signal_name   TEXT NOT NULL,
    severity      TEXT NOT NULL,
    source        TEXT NOT NULL,
    target_kind   TEXT NOT NULL,
    target_namespace TEXT NOT NULL,
    target_name   TEXT NOT NULL,
    phase         TEXT NOT NULL,
    firing_time   TIMESTAMPTZ NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX remediation_requests_fingerprint ON remediation_requests (fingerprint);

CREATE TABLE remediation_events (
    id            BIGSERIAL PRIMARY KEY,
    request_uid   TEXT NOT NULL REFERENCES remediation_requests (uid),
    at            TIMESTAMPTZ NOT NULL,
    kind          TEXT NOT NULL,          -- transition | action
    from_phase    TEXT,
    to_phase      TEXT,
    reason        TEXT NOT NULL,
    detail        JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- A retried write of the same event must not append it twice.
    dedup_key     TEXT NOT NULL UNIQUE
);
CREATE INDEX remediation_events_request ON remediation_events (request_uid, at);
