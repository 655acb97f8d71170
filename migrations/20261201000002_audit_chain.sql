-- Tamper evidence for the audit trail (K-AU-1). Every event carries the
-- hash of the event before it (in id order) and its own hash over that and
-- its canonical content, so an event edited or removed afterwards breaks
-- the chain at that point (`kubernaut audit verify` names it). The
-- canonical content is PostgreSQL's own text of a JSON array of the
-- fields, so writer and verifier cannot disagree on encodings.
CREATE FUNCTION audit_event_hash(prev TEXT, request_uid TEXT, at TIMESTAMPTZ, kind TEXT,
                                 from_phase TEXT, to_phase TEXT, reason TEXT, detail JSONB,
                                 dedup_key TEXT)
RETURNS TEXT LANGUAGE SQL IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(jsonb_build_array(
        prev, request_uid, (extract(epoch FROM at) * 1000000)::bigint, kind,
        from_phase, to_phase, reason, detail, dedup_key)::text, 'UTF8')), 'hex')
$$;

ALTER TABLE remediation_events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE remediation_events ADD COLUMN hash TEXT NOT NULL DEFAULT '';

-- Events written before the chain existed join it in id order.
DO $$
DECLARE
    e RECORD;
    last TEXT := '';
BEGIN
    FOR e IN SELECT * FROM remediation_events ORDER BY id LOOP
        UPDATE remediation_events
           SET prev_hash = last,
               hash = audit_event_hash(last, e.request_uid, e.at, e.kind, e.from_phase,
                                       e.to_phase, e.reason, e.detail, e.dedup_key)
         WHERE id = e.id
        RETURNING hash INTO last;
    END LOOP;
END $$;

-- Append-only: the application never changes or removes an event.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'remediation_events is append-only (% refused)', TG_OP;
END $$;

CREATE TRIGGER remediation_events_append_only
    BEFORE UPDATE OR DELETE ON remediation_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
