"""The spend database's schema, as numbered migrations applied once each.

The same SQL runs on SQLite and PostgreSQL. Money columns are integer
nano-dollars (``*_nanos``); times are unix seconds.
"""

from __future__ import annotations

import time

from thrifty.spend.db import Database

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE config_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
        INSERT INTO config_version (id, version) VALUES (1, 1);
        CREATE TABLE teams (
            id TEXT PRIMARY KEY, name TEXT, metadata TEXT NOT NULL DEFAULT '{}',
            rpm BIGINT, tpm BIGINT, created_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE users (
            id TEXT PRIMARY KEY, name TEXT, email TEXT, team_id TEXT REFERENCES teams(id),
            metadata TEXT NOT NULL DEFAULT '{}', created_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, name TEXT,
            user_id TEXT REFERENCES users(id), team_id TEXT REFERENCES teams(id),
            tags TEXT NOT NULL DEFAULT '[]', metadata TEXT NOT NULL DEFAULT '{}',
            rpm BIGINT, tpm BIGINT, is_admin INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION
        );
        CREATE TABLE budgets (
            id TEXT PRIMARY KEY, scope TEXT NOT NULL, scope_id TEXT NOT NULL,
            limit_nanos BIGINT NOT NULL, period TEXT NOT NULL,
            window_start DOUBLE PRECISION, window_end DOUBLE PRECISION,
            soft_thresholds TEXT NOT NULL DEFAULT '[]', webhook_url TEXT,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX budgets_scope ON budgets (scope, scope_id);
        CREATE TABLE policies (
            scope TEXT NOT NULL, scope_id TEXT NOT NULL, rules TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, scope_id)
        );
        CREATE TABLE ledger (
            request_id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL,
            key_id TEXT, user_id TEXT, team_id TEXT, tags TEXT NOT NULL DEFAULT '[]',
            endpoint TEXT, requested_model TEXT, served_model TEXT, provider TEXT,
            route_reason TEXT,
            prompt_tokens BIGINT NOT NULL DEFAULT 0, completion_tokens BIGINT NOT NULL DEFAULT 0,
            cached_tokens BIGINT NOT NULL DEFAULT 0, cache_write_tokens BIGINT NOT NULL DEFAULT 0,
            input_price DOUBLE PRECISION, output_price DOUBLE PRECISION,
            cached_price DOUBLE PRECISION,
            cost_nanos BIGINT NOT NULL DEFAULT 0, frontier_cost_nanos BIGINT NOT NULL DEFAULT 0,
            latency_ms DOUBLE PRECISION, status INTEGER, error_type TEXT,
            retries INTEGER NOT NULL DEFAULT 0, stream INTEGER NOT NULL DEFAULT 0,
            cache_hit INTEGER NOT NULL DEFAULT 0, batch INTEGER NOT NULL DEFAULT 0,
            scores TEXT
        );
        CREATE INDEX ledger_ts ON ledger (ts);
        CREATE INDEX ledger_key_ts ON ledger (key_id, ts);
        CREATE INDEX ledger_user_ts ON ledger (user_id, ts);
        CREATE INDEX ledger_team_ts ON ledger (team_id, ts);
        CREATE TABLE budget_spend (
            budget_id TEXT NOT NULL, period_start BIGINT NOT NULL, spent_nanos BIGINT NOT NULL,
            PRIMARY KEY (budget_id, period_start)
        );
        CREATE TABLE reservations (
            id TEXT NOT NULL, budget_id TEXT NOT NULL, period_start BIGINT NOT NULL,
            amount_nanos BIGINT NOT NULL, owner TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (id, budget_id)
        );
        CREATE INDEX reservations_budget ON reservations (budget_id, period_start);
        CREATE INDEX reservations_owner ON reservations (owner);
        CREATE TABLE budget_alerts (
            budget_id TEXT NOT NULL, period_start BIGINT NOT NULL, threshold DOUBLE PRECISION NOT NULL,
            sent_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (budget_id, period_start, threshold)
        );
        CREATE TABLE journal_marks (journal TEXT PRIMARY KEY, byte_offset BIGINT NOT NULL);
        CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        """,
    ),
]


# PostgreSQL only: the whole budget hold as one server-side call, so the budget
# rows stay locked for the few microseconds the function runs instead of for
# several client round trips. It locks the budget rows first; each later
# statement then takes a fresh snapshot (READ COMMITTED, volatile function)
# that sees every hold committed before the lock was granted. Returns no row
# when the hold is taken, or the first budget that refuses it.
RESERVE_FUNCTION = """
CREATE OR REPLACE FUNCTION thrifty_reserve(
    p_id text, p_budgets text[], p_periods bigint[], p_amount bigint, p_owner text,
    p_now double precision, p_expires double precision)
RETURNS TABLE (refused_budget text, limit_nanos bigint, spent_nanos bigint, held_nanos bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
BEGIN
    PERFORM 1 FROM budgets b WHERE b.id = ANY(p_budgets) ORDER BY b.id FOR UPDATE;
    FOR r IN
        SELECT q.bid, b.limit_nanos AS lim, COALESCE(s.spent_nanos, 0)::bigint AS sp,
               COALESCE((SELECT SUM(x.amount_nanos) FROM reservations x
                         WHERE x.budget_id = q.bid AND x.period_start = q.ps AND x.expires_at > p_now), 0)::bigint AS hd
        FROM unnest(p_budgets, p_periods) AS q(bid, ps)
        JOIN budgets b ON b.id = q.bid
        LEFT JOIN budget_spend s ON s.budget_id = q.bid AND s.period_start = q.ps
    LOOP
        IF r.sp + r.hd + p_amount > r.lim THEN
            refused_budget := r.bid; limit_nanos := r.lim; spent_nanos := r.sp; held_nanos := r.hd;
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
    INSERT INTO reservations (id, budget_id, period_start, amount_nanos, owner, expires_at)
    SELECT p_id, q.bid, q.ps, p_amount, p_owner, p_expires
    FROM unnest(p_budgets, p_periods) AS q(bid, ps) JOIN budgets b ON b.id = q.bid;
    RETURN;
END
$fn$
"""

# PostgreSQL only: check and count requests/tokens per minute for several
# scopes at once (key, team), shared by every gateway. Rows are locked in the
# order given (always key, then team), so two calls cannot deadlock.
RATE_FUNCTION = """
CREATE OR REPLACE FUNCTION thrifty_rate(
    p_scopes text[], p_limits bigint[], p_amounts bigint[], p_minute bigint, p_elapsed double precision)
RETURNS TABLE (refused_scope text, previous_used bigint, current_used bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    i int;
    cur bigint;
    prev bigint;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_scopes, 1), 0) LOOP
        INSERT INTO rate_windows (scope, minute, used) VALUES (p_scopes[i], p_minute, 0) ON CONFLICT DO NOTHING;
        SELECT w.used INTO cur FROM rate_windows w WHERE w.scope = p_scopes[i] AND w.minute = p_minute FOR UPDATE;
        SELECT w.used INTO prev FROM rate_windows w WHERE w.scope = p_scopes[i] AND w.minute = p_minute - 1;
        prev := coalesce(prev, 0);
        IF prev * (1 - p_elapsed) + cur + p_amounts[i] > p_limits[i] THEN
            refused_scope := p_scopes[i]; previous_used := prev; current_used := cur;
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_scopes, 1), 0) LOOP
        UPDATE rate_windows SET used = used + p_amounts[i] WHERE scope = p_scopes[i] AND minute = p_minute;
    END LOOP;
    RETURN;
END
$fn$
"""

# PostgreSQL only: thrifty_reserve for a batch of holds on the same budgets
# (group commit): the gateway coalesces the admits that arrive while a call
# for those budgets is in flight, so a hot budget is locked once per batch
# instead of once per request. Holds are checked in order, each against
# spent + held + the holds granted before it in the batch; refused holds are
# returned with the budget that refused them.
RESERVE_MANY_FUNCTION = """
CREATE OR REPLACE FUNCTION thrifty_reserve_many(
    p_ids text[], p_amounts bigint[], p_budgets text[], p_periods bigint[], p_owner text,
    p_now double precision, p_expires double precision)
RETURNS TABLE (hold_id text, refused_budget text, limit_nanos bigint, spent_nanos bigint, held_nanos bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    bids text[];
    pss bigint[];
    lims bigint[];
    sps bigint[];
    hds bigint[];
    granted_ids text[] := '{}';
    granted_amounts bigint[] := '{}';
    i int;
    j int;
    fits boolean;
BEGIN
    PERFORM 1 FROM budgets b WHERE b.id = ANY(p_budgets) ORDER BY b.id FOR UPDATE;
    SELECT array_agg(q.bid ORDER BY q.ord), array_agg(q.ps ORDER BY q.ord), array_agg(b.limit_nanos ORDER BY q.ord),
           array_agg(COALESCE(s.spent_nanos, 0)::bigint ORDER BY q.ord),
           array_agg(COALESCE((SELECT SUM(x.amount_nanos) FROM reservations x
                               WHERE x.budget_id = q.bid AND x.period_start = q.ps AND x.expires_at > p_now), 0)::bigint
                     ORDER BY q.ord)
      INTO bids, pss, lims, sps, hds
      FROM unnest(p_budgets, p_periods) WITH ORDINALITY AS q(bid, ps, ord)
      JOIN budgets b ON b.id = q.bid
      LEFT JOIN budget_spend s ON s.budget_id = q.bid AND s.period_start = q.ps;
    IF bids IS NULL THEN
        RETURN;  -- every budget was deleted meanwhile: nothing to hold
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        fits := true;
        FOR j IN 1 .. array_length(bids, 1) LOOP
            IF sps[j] + hds[j] + p_amounts[i] > lims[j] THEN
                hold_id := p_ids[i]; refused_budget := bids[j]; limit_nanos := lims[j];
                spent_nanos := sps[j]; held_nanos := hds[j];
                RETURN NEXT;
                fits := false;
                EXIT;
            END IF;
        END LOOP;
        IF fits THEN
            FOR j IN 1 .. array_length(bids, 1) LOOP
                hds[j] := hds[j] + p_amounts[i];
            END LOOP;
            granted_ids := granted_ids || p_ids[i];
            granted_amounts := granted_amounts || p_amounts[i];
        END IF;
    END LOOP;
    INSERT INTO reservations (id, budget_id, period_start, amount_nanos, owner, expires_at)
    SELECT g.id, x.bid, x.ps, g.amount, p_owner, p_expires
    FROM unnest(granted_ids, granted_amounts) AS g(id, amount) CROSS JOIN unnest(bids, pss) AS x(bid, ps);
    RETURN;
END
$fn$
"""

# version -> statements run only on PostgreSQL (each one whole: function bodies hold semicolons)
POSTGRES_MIGRATIONS: dict[int, list[str]] = {2: [RESERVE_FUNCTION], 3: [RATE_FUNCTION], 4: [RESERVE_MANY_FUNCTION]}
MIGRATIONS.append((2, ""))  # PostgreSQL: thrifty_reserve(); nothing on SQLite
MIGRATIONS.append((3, """
        CREATE TABLE rate_windows (
            scope TEXT NOT NULL, minute BIGINT NOT NULL, used BIGINT NOT NULL, PRIMARY KEY (scope, minute)
        )
        """))
MIGRATIONS.append((4, ""))  # PostgreSQL: thrifty_reserve_many(); nothing on SQLite
# Batches and their files (thrifty.multipliers.batches): where the ledger is, so that every
# replica sees them, and a batch whose runner's lease expired is resumed by another.
MIGRATIONS.append((5, """
        CREATE TABLE batches (
            id TEXT PRIMARY KEY, owner TEXT NOT NULL, principal TEXT NOT NULL, endpoint TEXT NOT NULL,
            input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL, status TEXT NOT NULL,
            created_at BIGINT NOT NULL, in_progress_at BIGINT, finalizing_at BIGINT, completed_at BIGINT,
            cancelling_at BIGINT, cancelled_at BIGINT, expires_at BIGINT NOT NULL,
            output_file_id TEXT, error_file_id TEXT, total INTEGER NOT NULL, metadata TEXT,
            lease_owner TEXT, lease_expires DOUBLE PRECISION
        );
        CREATE INDEX batches_owner ON batches (owner, created_at);
        CREATE INDEX batches_status ON batches (status);
        CREATE TABLE batch_lines (
            batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
            status_code INTEGER, response TEXT, upstream TEXT, hold TEXT, settle TEXT, submission TEXT,
            PRIMARY KEY (batch_id, line)
        );
        CREATE INDEX batch_lines_pending ON batch_lines (batch_id) WHERE status_code IS NULL;
        CREATE TABLE batch_submissions (
            tag TEXT PRIMARY KEY, batch_id TEXT NOT NULL, provider TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, file_id TEXT, upstream_id TEXT, expires_at DOUBLE PRECISION
        );
        CREATE INDEX batch_submissions_batch ON batch_submissions (batch_id)
        """))
_BATCH_FILES = """
        CREATE TABLE batch_files (
            id TEXT PRIMARY KEY, owner TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
            bytes BIGINT NOT NULL, created_at BIGINT NOT NULL, content {} NOT NULL
        )"""
POSTGRES_MIGRATIONS[5] = [_BATCH_FILES.format("BYTEA"), "CREATE INDEX batch_files_owner ON batch_files (owner, created_at)"]
# version -> statements run only on SQLite (where the types differ)
SQLITE_MIGRATIONS: dict[int, list[str]] = {
    5: [_BATCH_FILES.format("BLOB"), "CREATE INDEX batch_files_owner ON batch_files (owner, created_at)"],
}
# The per-request view (thrifty.spend.requests): filters by served model and status, newest first.
MIGRATIONS.append((6, """
        CREATE INDEX ledger_model_ts ON ledger (served_model, ts);
        CREATE INDEX ledger_status_ts ON ledger (status, ts);
"""))

# Learning from the deployment's traffic (thrifty.router.labels): each routed request's prompt
# context and the probability its model was chosen with, in the ledger; every rating of a
# routed answer (feedback or judge) as a label every replica loads.
MIGRATIONS.append((7, """
        ALTER TABLE ledger ADD COLUMN route_context TEXT;
        ALTER TABLE ledger ADD COLUMN route_propensity DOUBLE PRECISION;
        ALTER TABLE ledger ADD COLUMN route_explored INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE router_labels (
            request_id TEXT NOT NULL, source TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL, team_id TEXT, model TEXT NOT NULL,
            score DOUBLE PRECISION NOT NULL, weight DOUBLE PRECISION NOT NULL, context TEXT NOT NULL,
            PRIMARY KEY (request_id, source)
        );
        CREATE INDEX router_labels_updated ON router_labels (updated_at)
"""))
# Replica leases (thrifty.spend.leases): each gateway process renews a row; the holds of a
# replica whose lease lapsed are charged in full by a survivor (thrifty.spend.reclaim). A hold's
# ``detail`` says whose request it is (request id, key, user, team, tags, model) for that record.
MIGRATIONS.append((8, """
        CREATE TABLE replica_leases (
            replica TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL, renewed_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        );
        ALTER TABLE reservations ADD COLUMN detail TEXT
"""))
# PostgreSQL only: thrifty_reserve_many with each hold's detail stored on its rows (same checks).

def _with_details(many: str) -> str:
    """``thrifty_reserve_many`` as ``thrifty_reserve_detailed``: the same checks, each hold's
    detail (``p_details``) stored on its rows."""
    edits = (
        ("FUNCTION thrifty_reserve_many(\n    p_ids text[], p_amounts bigint[], ",
         "FUNCTION thrifty_reserve_detailed(\n    p_ids text[], p_amounts bigint[], p_details text[], "),
        ("    granted_amounts bigint[] := '{}';\n",
         "    granted_amounts bigint[] := '{}';\n    granted_details text[] := '{}';\n"),
        ("            granted_amounts := granted_amounts || p_amounts[i];\n",
         ("            granted_amounts := granted_amounts || p_amounts[i];\n"
         "            granted_details := granted_details || p_details[i];\n")),
        (("amount_nanos, owner, expires_at)\n    SELECT g.id, x.bid, x.ps, g.amount, p_owner, p_expires\n"
         "    FROM unnest(granted_ids, granted_amounts) AS g(id, amount)"),
         ("amount_nanos, owner, expires_at, detail)\n    SELECT g.id, x.bid, x.ps, g.amount, p_owner, p_expires, g.detail\n"
         "    FROM unnest(granted_ids, granted_amounts, granted_details) AS g(id, amount, detail)")),
    )
    for old, replacement in edits:
        assert old in many, old
        many = many.replace(old, replacement)
    return many


RESERVE_DETAILED_FUNCTION = _with_details(RESERVE_MANY_FUNCTION)
POSTGRES_MIGRATIONS[8] = [RESERVE_DETAILED_FUNCTION]


def migrate(db: Database) -> int:
    """Apply the migrations not applied yet; returns the schema version."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )
    with db.transaction():
        if db.postgres:
            # Two gateways starting at once must not both migrate.
            db.execute("SELECT pg_advisory_xact_lock(727274)")
        done = {row[0] for row in db.all("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            for statement in sql.split(";"):
                if statement.strip():
                    db.execute(statement)
            for statement in (POSTGRES_MIGRATIONS if db.postgres else SQLITE_MIGRATIONS).get(version, ()):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time()))
    return MIGRATIONS[-1][0]


def bump_config(db: Database) -> None:
    """Tell every gateway sharing this database to reload keys, budgets and policies."""
    db.execute("UPDATE config_version SET version = version + 1 WHERE id = 1")


def config_version(db: Database) -> int:
    row = db.one("SELECT version FROM config_version WHERE id = 1")
    return int(row[0]) if row else 0
