//! The store's schema, as an ordered list of migrations. `PRAGMA user_version` records how
//! many have run; a store whose version is above the last one here was written by a newer
//! mqlsync and is refused. Never edit a shipped migration: add the next one.

/// Marks a SQLite file as an mqlsync store (`PRAGMA application_id`, "MQLS").
pub const APPLICATION_ID: i32 = 0x4D51_4C53;

/// Migration `i` moves the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE cursors (
        name        TEXT PRIMARY KEY,
        value       TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    ) STRICT;

    -- The current version of each threshold record, and every version ever seen.
    CREATE TABLE thresholds (
        id           TEXT PRIMARY KEY,
        body         TEXT NOT NULL,
        modified_at  TEXT NOT NULL
    ) STRICT;
    CREATE TABLE threshold_versions (
        threshold_id TEXT NOT NULL,
        modified_at  TEXT NOT NULL,
        score        REAL NOT NULL,
        segment      TEXT NOT NULL,
        effective_from TEXT,
        effective_to TEXT,
        active       INTEGER NOT NULL,
        deleted      INTEGER NOT NULL,
        set_by       TEXT,
        seen_at      TEXT NOT NULL,
        PRIMARY KEY (threshold_id, modified_at)
    ) STRICT;

    -- Lead and contact snapshots with mqlsync's stamps.
    CREATE TABLE persons (
        crm_id      TEXT PRIMARY KEY,
        kind        TEXT,
        map_lead_id INTEGER,
        facts       TEXT,
        stamps      TEXT NOT NULL,
        cooldown    TEXT,
        last_hold   TEXT
    ) STRICT;

    -- One row per MAP lead, rewritten on every score change: plain columns, instants as
    -- integer nanoseconds since 1970 (no text formatting on the hot path).
    CREATE TABLE map_leads (
        id            INTEGER PRIMARY KEY,
        crm_kind      TEXT,
        crm_id        TEXT,
        link_at_ns    INTEGER,
        total         REAL,
        behavior      REAL,
        demographic   REAL,
        decayed       REAL NOT NULL,
        decay_anchor_ns INTEGER,
        total_at_ns   INTEGER,
        total_key     INTEGER NOT NULL,
        behavior_at_ns INTEGER,
        behavior_key  INTEGER NOT NULL,
        demographic_at_ns INTEGER,
        demographic_key INTEGER NOT NULL,
        campaign_id   TEXT,
        campaign_name TEXT,
        unlinked_recorded INTEGER NOT NULL
    ) STRICT;

    -- Every score change seen, for what-if reports and backfill.
    CREATE TABLE score_history (
        change_id   TEXT PRIMARY KEY,
        map_lead_id INTEGER NOT NULL,
        part        TEXT NOT NULL,
        new_value   REAL NOT NULL,
        old_value   REAL,
        campaign_id TEXT,
        campaign_name TEXT,
        at_ns       INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE opportunities (
        id          TEXT PRIMARY KEY,
        account_id  TEXT NOT NULL,
        body        TEXT NOT NULL
    ) STRICT;

    CREATE TABLE cycles (
        external_id TEXT PRIMARY KEY,
        crm_id      TEXT NOT NULL,
        number      INTEGER NOT NULL,
        status      TEXT NOT NULL,
        owner_id    TEXT,
        team        TEXT,
        segment     TEXT NOT NULL,
        mql_at      TEXT NOT NULL,
        backfilled  INTEGER NOT NULL,
        body        TEXT NOT NULL,
        UNIQUE (crm_id, number)
    ) STRICT;
    CREATE INDEX cycles_by_status ON cycles (status);

    -- Pending remote writes, one row per remote record, latest desired state wins.
    CREATE TABLE outbox (
        key         TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        payload     TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    ) STRICT;
    CREATE INDEX outbox_pending ON outbox (state, updated_at);

    -- Every decision, with its machine-readable reason.
    CREATE TABLE audit (
        seq         INTEGER PRIMARY KEY,
        at          TEXT NOT NULL,
        subject     TEXT NOT NULL,
        action      TEXT NOT NULL,
        reason_code TEXT NOT NULL,
        reason      TEXT NOT NULL,
        recorded_at TEXT NOT NULL
    ) STRICT;
    CREATE INDEX audit_by_subject ON audit (subject, seq);

    CREATE TABLE engine_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    "#,
    // 2: the CRM's own field history of threshold records (who turned which knob, from what,
    // to what, when), kept for the audit trail and for backfill.
    r#"
    CREATE TABLE threshold_field_history (
        id           TEXT PRIMARY KEY,
        threshold_id TEXT NOT NULL,
        field        TEXT NOT NULL,
        old_value    TEXT,
        new_value    TEXT,
        changed_at   TEXT NOT NULL,
        changed_by   TEXT
    ) STRICT;
    CREATE INDEX threshold_field_history_by_threshold ON threshold_field_history (threshold_id, changed_at);
    "#,
    // 3: the score history gets an arrival order (`seq`), so that MAP-lead scores can be
    // saved as a periodic snapshot plus the history after it, instead of a row rewrite per
    // lead per batch. The rows of earlier versions are all in the snapshot already (those
    // versions rewrote every changed lead each batch), so the snapshot covers them.
    r#"
    CREATE TABLE score_history_v3 (
        seq         INTEGER PRIMARY KEY,
        change_id   TEXT NOT NULL UNIQUE,
        map_lead_id INTEGER NOT NULL,
        part        TEXT NOT NULL,
        new_value   REAL NOT NULL,
        old_value   REAL,
        campaign_id TEXT,
        campaign_name TEXT,
        at_ns       INTEGER NOT NULL
    ) STRICT;
    INSERT INTO score_history_v3 (change_id, map_lead_id, part, new_value, old_value, campaign_id, campaign_name, at_ns)
        SELECT change_id, map_lead_id, part, new_value, old_value, campaign_id, campaign_name, at_ns
        FROM score_history ORDER BY at_ns, change_id;
    DROP TABLE score_history;
    ALTER TABLE score_history_v3 RENAME TO score_history;
    INSERT INTO engine_meta (key, value)
        SELECT 'scores_saved_through', CAST(coalesce(max(seq), 0) AS TEXT) FROM score_history;
    "#,
    // 4: what the engine remembers of a MAP lead's hand-raises (the activities applied, and
    // one waiting for the lead's CRM record), for the few leads that have any.
    r#"
    CREATE TABLE hand_raises (
        map_lead_id INTEGER PRIMARY KEY,
        body        TEXT NOT NULL
    ) STRICT;
    "#,
    // 5: accounts, when the mapping reads them: the attributes their contacts carry through
    // them (a target-account flag) and their owners.
    r#"
    CREATE TABLE accounts (
        id   TEXT PRIMARY KEY,
        body TEXT NOT NULL
    ) STRICT;
    "#,
    // 6: under account scoring, each account's score changes inside the window.
    r#"
    CREATE TABLE account_scores (
        account_id TEXT PRIMARY KEY,
        body       TEXT NOT NULL
    ) STRICT;
    "#,
    // 7: one flat row per cycle for the reports: the facts they group and count by as plain
    // columns (instants as integer nanoseconds), with the person's attributes at the cycle's
    // last change, so that `report` aggregates in SQL instead of decoding every cycle. The
    // rows of the cycles already stored are filled in by `facts::rebuild` in the same
    // transaction.
    r#"
    CREATE TABLE cycle_facts (
        external_id   TEXT PRIMARY KEY,
        crm_id        TEXT NOT NULL,
        kind          TEXT,
        number        INTEGER NOT NULL,
        status        TEXT NOT NULL,
        owner_id      TEXT,
        owner_at_mql  TEXT,
        team          TEXT,
        segment       TEXT NOT NULL,
        attributes    TEXT NOT NULL,
        account_id    TEXT,
        campaign_id   TEXT,
        campaign_name TEXT,
        qualified_by  TEXT NOT NULL,
        score         REAL NOT NULL,
        threshold     REAL NOT NULL,
        threshold_id  TEXT,
        mql_at_ns     INTEGER NOT NULL,
        seen_at_ns    INTEGER NOT NULL,
        sal_at_ns     INTEGER,
        closed_at_ns  INTEGER,
        sla_due_ns    INTEGER,
        overdue       INTEGER NOT NULL,
        reassignments INTEGER NOT NULL,
        rejection_reason TEXT,
        outcome       TEXT,
        backfilled    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX cycle_facts_by_mql ON cycle_facts (mql_at_ns);
    CREATE INDEX cycle_facts_by_account ON cycle_facts (account_id) WHERE account_id IS NOT NULL;
    CREATE INDEX opportunities_by_account ON opportunities (account_id);
    "#,
    // 8: a score change is unique by its instant and id, `(at_ns, change_id)`, instead of by
    // its id alone. An activity's instant never changes, so the same change is still kept
    // once; but history arrives in time order, so each commit's keys land at the index's
    // right edge instead of all over it. Keyed by id alone, an index of millions of changes
    // whose ids do not follow time (the sandbox's; `current:` ids beside activity ids) took
    // a random page per change. The rows keep their `seq`: the score snapshot's mark and the
    // what-if's ranges count by it.
    r#"
    CREATE TABLE score_history_v8 (
        seq         INTEGER PRIMARY KEY,
        change_id   TEXT NOT NULL,
        map_lead_id INTEGER NOT NULL,
        part        TEXT NOT NULL,
        new_value   REAL NOT NULL,
        old_value   REAL,
        campaign_id TEXT,
        campaign_name TEXT,
        at_ns       INTEGER NOT NULL,
        UNIQUE (at_ns, change_id)
    ) STRICT;
    INSERT INTO score_history_v8 (seq, change_id, map_lead_id, part, new_value, old_value, campaign_id, campaign_name, at_ns)
        SELECT seq, change_id, map_lead_id, part, new_value, old_value, campaign_id, campaign_name, at_ns
        FROM score_history ORDER BY seq;
    DROP TABLE score_history;
    ALTER TABLE score_history_v8 RENAME TO score_history;
    "#,
    // 9: the score history packed in blocks of thousands of changes, for the readers of all of
    // it (what-if): one row where there were thousands (`store/blocks.rs`). A copy, written by
    // the commit that completes a block; the migration packs the history already stored.
    // What-if's "what happened" (a segment's MQLs by week, the people who ever converted) and
    // the knob's feedback count from two indexes alone, not a pass over every cycle's row.
    r#"
    CREATE TABLE score_blocks (
        first_seq   INTEGER PRIMARY KEY,
        last_seq    INTEGER NOT NULL,
        changes     INTEGER NOT NULL,
        body        BLOB NOT NULL
    ) STRICT;
    CREATE INDEX cycle_facts_by_segment ON cycle_facts (segment, mql_at_ns);
    CREATE INDEX cycle_facts_converted ON cycle_facts (crm_id) WHERE status = 'Converted';
    "#,
];
