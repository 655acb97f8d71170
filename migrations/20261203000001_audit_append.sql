-- The audit writer appends a batch of events in one call rather than one
-- statement per event: the same insert, link and hash as each statement
-- made (an event whose dedup_key is already stored is skipped and the
-- next links to the last one stored), at one round trip per batch.
-- The caller holds the chain's advisory lock for its transaction.
CREATE FUNCTION audit_append_events(uids TEXT[], ats TIMESTAMPTZ[], kinds TEXT[],
                                    froms TEXT[], tos TEXT[], reasons TEXT[],
                                    details JSONB[], keys TEXT[])
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    last TEXT;
    written TEXT;
    appended INTEGER := 0;
BEGIN
    SELECT hash INTO last FROM remediation_events ORDER BY id DESC LIMIT 1;
    last := COALESCE(last, '');
    FOR i IN 1 .. COALESCE(array_length(uids, 1), 0) LOOP
        INSERT INTO remediation_events
            (request_uid, at, kind, from_phase, to_phase, reason, detail, dedup_key, prev_hash, hash)
        VALUES (uids[i], ats[i], kinds[i], froms[i], tos[i], reasons[i], details[i], keys[i], last,
                audit_event_hash(last, uids[i], ats[i], kinds[i], froms[i], tos[i], reasons[i],
                                 details[i], keys[i]))
        ON CONFLICT (dedup_key) DO NOTHING
        RETURNING hash INTO written;
        IF FOUND THEN
            last := written;
            appended := appended + 1;
        END IF;
    END LOOP;
    RETURN appended;
END $$;
