-- Verification outcomes (K-AU-2): one row per request and action that
-- changed something, so that effectiveness (K-AI-2) counts what was
-- verified to work rather than what reached Completed.
CREATE TABLE remediation_outcomes (
    request_uid   TEXT NOT NULL REFERENCES remediation_requests (uid),
    action        TEXT NOT NULL,
    signal_name   TEXT NOT NULL,
    target_kind   TEXT NOT NULL,
    environment   TEXT NOT NULL,
    outcome       TEXT NOT NULL CHECK (outcome IN ('Effective', 'Ineffective', 'Inconclusive')),
    score         DOUBLE PRECISION,
    components    JSONB NOT NULL DEFAULT '[]',
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (request_uid, action)
);
CREATE INDEX remediation_outcomes_history
    ON remediation_outcomes (signal_name, target_kind, recorded_at);
