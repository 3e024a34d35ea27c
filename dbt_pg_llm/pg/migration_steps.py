"""The audit schema's migration steps: (version, SQL) for a schema name, applied in order
by ``migrations.migrate``. Append-only: never edit a released step, add a new version.
"""
from __future__ import annotations

__all__ = ["migration_steps"]


def migration_steps(s: str, q: str) -> list[tuple[int, str]]:
    """The migration steps, in order, for the audit schema ``s`` (``q``: it quoted; validated by the
    caller, so both may be inlined): (version, SQL)."""
    return [
        (1, f"""
-- The shared cache: one row per key = sha256(fingerprint || '\\n' || prompt). A row with
-- valid = false or expires_at in the past is a miss (requested again; the new answer replaces it).
create table if not exists {q}.llm_results (
    key               text primary key,
    model             text not null,
    model_version     text,
    fingerprint       text,
    output_text       text,
    output_json       jsonb,
    confidence        double precision,
    prompt_tokens     integer not null default 0,
    completion_tokens integer not null default 0,
    cost_usd          numeric not null default 0,
    truncated         boolean not null default false,
    created_at        timestamptz not null default now(),
    expires_at        timestamptz,
    valid             boolean not null default true,
    run_id            text
);
-- Keys being requested right now, so two concurrent runs never pay for the same key.
-- backend_pid is the claiming session: if it is gone the claim is dead at once; otherwise a
-- claim not refreshed for a while (claimed_at) counts as stale.
create table if not exists {q}.llm_claims (
    key         text primary key,
    run_id      text,
    claimed_at  timestamptz not null default now(),
    claim_token text,
    backend_pid integer
);
create index if not exists llm_claims_token_idx on {q}.llm_claims (claim_token);
-- One row per dbt invocation; every filled model adds its counts.
create table if not exists {q}.llm_runs (
    run_id            text primary key,
    started_at        timestamptz not null default now(),
    ended_at          timestamptz,
    target            text,
    status            text,
    rows              bigint not null default 0,
    distinct_keys     bigint not null default 0,
    requests          bigint not null default 0,
    cache_hits        bigint not null default 0,
    errors            bigint not null default 0,
    prompt_tokens     bigint not null default 0,
    completion_tokens bigint not null default 0,
    cost_usd          numeric not null default 0,
    saved_cost_usd    numeric not null default 0
);
-- Dead letters: keys whose request failed, per model node; resolved when a later run succeeds.
create table if not exists {q}.llm_errors (
    id          bigserial primary key,
    key         text not null,
    node_id     text not null default '',
    model       text,
    error_kind  text not null,
    message     text,
    attempts    integer not null default 1,
    first_seen  timestamptz not null default now(),
    last_seen   timestamptz not null default now(),
    resolved_at timestamptz,
    run_id      text,
    unique (key, node_id)
);
create index if not exists llm_errors_open_idx on {q}.llm_errors (model) where resolved_at is null;
create table if not exists {q}.llm_alerts (
    id         bigserial primary key,
    ts         timestamptz not null default now(),
    run_id     text,
    model      text,
    alert_type text not null,
    message    text,
    severity   text not null default 'warning'
);
create index if not exists llm_alerts_ts_idx on {q}.llm_alerts (ts);
"""),
        (2, f"""
-- Every request attempt (and every cache hit, cached = true). Monthly partitions are created on
-- demand by llm_calls_ensure_partition(ts) before writing; rows outside them land in the default.
create table if not exists {q}.llm_calls (
    ts                timestamptz not null,
    run_id            text,
    node_id           text,
    model             text,
    operation         text,
    input_hash        text,
    attempt           integer,
    error_kind        text,
    error_message     text,
    http_status       integer,
    prompt_tokens     integer not null default 0,
    completion_tokens integer not null default 0,
    latency_ms        double precision,
    cost_usd          numeric not null default 0,
    cached            boolean not null default false,
    saved_cost_usd    numeric not null default 0
) partition by range (ts);
create table if not exists {q}.llm_calls_default partition of {q}.llm_calls default;
create index if not exists llm_calls_model_ts_idx on {q}.llm_calls (model, ts);
create index if not exists llm_calls_run_idx on {q}.llm_calls (run_id);

-- Creates the partition of the (UTC) month of p_ts if missing; moves rows of that month out of
-- the default partition first (else ATTACH would refuse). Returns the partition's name.
create or replace function {q}.llm_calls_ensure_partition(p_ts timestamptz) returns text
language plpgsql as $fn$
declare
    lo   timestamptz := date_trunc('month', p_ts, 'UTC');
    hi   timestamptz := (date_trunc('month', p_ts, 'UTC') at time zone 'UTC' + interval '1 month') at time zone 'UTC';
    part text := 'llm_calls_p' || to_char(lo at time zone 'UTC', 'YYYYMM');
begin
    if to_regclass(format('%I.%I', '{s}', part)) is not null then
        return part;
    end if;
    -- serialize creators (this lock does not block inserts; ATTACH takes it anyway). A table lock,
    -- unlike an advisory lock, also processes pending catalog invalidations, so the check below
    -- sees a partition another session created while we waited.
    execute format('lock table %I.llm_calls in share update exclusive mode', '{s}');
    if to_regclass(format('%I.%I', '{s}', part)) is not null then
        return part;  -- created by someone else while we waited
    end if;
    execute format('create table %I.%I (like %I.llm_calls including defaults)', '{s}', part, '{s}');
    execute format('insert into %I.%I select * from %I.llm_calls_default where ts >= $1 and ts < $2',
                   '{s}', part, '{s}') using lo, hi;
    execute format('delete from %I.llm_calls_default where ts >= $1 and ts < $2', '{s}') using lo, hi;
    execute format('alter table %I.llm_calls attach partition %I.%I for values from (%L) to (%L)',
                   '{s}', '{s}', part, lo, hi);
    return part;
end
$fn$;
"""),
        (3, f"""
create or replace view {q}.llm_metrics as
select
    c.model,
    (c.ts at time zone 'UTC')::date                                          as day,
    count(*) filter (where not c.cached)                                     as requests,
    count(*) filter (where c.error_kind is not null)                         as errors,
    count(*) filter (where c.cached)                                         as cache_hits,
    round(avg(c.latency_ms) filter (where not c.cached)::numeric, 1)         as avg_latency_ms,
    round((percentile_cont(0.95) within group (order by c.latency_ms)
           filter (where not c.cached))::numeric, 1)                         as p95_latency_ms,
    coalesce(sum(c.prompt_tokens), 0)                                        as prompt_tokens,
    coalesce(sum(c.completion_tokens), 0)                                    as completion_tokens,
    coalesce(sum(c.cost_usd), 0)                                             as cost_usd,
    coalesce(sum(c.saved_cost_usd), 0)                                       as saved_cost_usd,
    round(count(*) filter (where c.cached)::numeric / nullif(count(*), 0), 4) as cache_hit_rate
from {q}.llm_calls c
group by c.model, (c.ts at time zone 'UTC')::date;

-- Per model: last call, last error, and the last hour's requests / errors / latency.
-- (Calls in flight are not knowable from the log: see the engine's ModelStatus for that.)
create or replace view {q}.llm_model_status as
select
    c.model,
    max(c.ts)                                                                as last_call_at,
    max(c.ts) filter (where c.error_kind is not null)                        as last_error_at,
    (array_agg(c.error_kind || coalesce(': ' || c.error_message, '') order by c.ts desc)
        filter (where c.error_kind is not null))[1]                          as last_error_message,
    count(*) filter (where not c.cached and c.ts > now() - interval '1 hour') as requests_1h,
    count(*) filter (where c.error_kind is not null and c.ts > now() - interval '1 hour') as errors_1h,
    round(count(*) filter (where c.error_kind is not null and c.ts > now() - interval '1 hour')::numeric
          / nullif(count(*) filter (where not c.cached and c.ts > now() - interval '1 hour'), 0), 4)
                                                                             as error_rate_1h,
    round(avg(c.latency_ms) filter (where not c.cached and c.ts > now() - interval '1 hour')::numeric, 1)
                                                                             as avg_latency_ms_1h
from {q}.llm_calls c
group by c.model;
"""),
        (4, f"""
-- Staging for DataFrame sessions (frame.py): the distinct prompts of one Series, by batch.
create unlogged table if not exists {q}.llm_frame_prompts (
    batch_id   text not null,
    prompt     text not null,
    created_at timestamptz not null default now()
);
create index if not exists llm_frame_prompts_batch_idx on {q}.llm_frame_prompts (batch_id);
"""),
        (5, f"""
-- Run lifecycle: a run's row exists from its first fill on (status 'running', heartbeat_at
-- refreshed while filling), so a killed run leaves a trace; the next run marks a 'running' row
-- whose heartbeat is old 'crashed'. outcome = the worst finished fill (success < partial <
-- failed); status = 'running' while fills are active, else the outcome.
alter table {q}.llm_runs add column if not exists heartbeat_at timestamptz;
alter table {q}.llm_runs add column if not exists active_fills integer not null default 0;
alter table {q}.llm_runs add column if not exists outcome text;
update {q}.llm_runs set status = 'failed' where status = 'error';
-- Costs were written as binary floats (0.0027599999999999764): round them to 10 decimals, as
-- the writers now do.
update {q}.llm_results set cost_usd = round(cost_usd, 10) where cost_usd <> round(cost_usd, 10);
update {q}.llm_runs set cost_usd = round(cost_usd, 10), saved_cost_usd = round(saved_cost_usd, 10)
 where cost_usd <> round(cost_usd, 10) or saved_cost_usd <> round(saved_cost_usd, 10);
update {q}.llm_calls set cost_usd = round(cost_usd, 10), saved_cost_usd = round(saved_cost_usd, 10)
 where cost_usd <> round(cost_usd, 10) or saved_cost_usd <> round(saved_cost_usd, 10);
"""),
        (6, f"""
-- Claims say who holds them (shown to a run waiting for them) and carry a heartbeat: a claimer
-- refreshes heartbeat_at while it works; claims whose heartbeat is older than llm.claim_timeout_s
-- are taken over (a frozen process keeps its session, so "the session is gone" is not enough).
-- claimed_at stays the time of the claim ("since when").
alter table {q}.llm_claims
    add column if not exists heartbeat_at timestamptz not null default now(),
    add column if not exists node_id      text,
    add column if not exists client_pid   integer,
    add column if not exists client_host  text;
update {q}.llm_claims set heartbeat_at = claimed_at;
"""),
        (10, f"""
-- Provider batches (OpenAI Batch API, Anthropic Message Batches; pg/batch_*.py). A row is written
-- BEFORE the batch is created at the provider (status 'submitting', batch_uid = our idempotency id,
-- sent as metadata / custom_id prefix), so a run killed in between leaves a row the next run
-- reconciles instead of a batch nobody knows about. open = its keys must not be requested again.
create table if not exists {q}.llm_batches (
    batch_uid         text primary key,
    provider          text not null,
    model             text not null,
    model_version     text,
    fingerprint       text not null,
    spec              jsonb not null,
    provider_batch_id text unique,
    status            text not null,
    open              boolean not null default true,
    key_count         integer not null,
    answered          integer not null default 0,
    failed            integer not null default 0,
    prompt_tokens     bigint not null default 0,
    completion_tokens bigint not null default 0,
    cost_usd          numeric not null default 0,
    discount          double precision not null default 0.5,
    submitted_at      timestamptz not null default now(),
    completed_at      timestamptz,
    collected_at      timestamptz,
    run_id            text,
    node_id           text,
    submitter_pid     integer,
    message           text
);
create index if not exists llm_batches_open_idx on {q}.llm_batches (model) where open;
create table if not exists {q}.llm_batch_keys (
    batch_uid text not null references {q}.llm_batches (batch_uid) on delete cascade,
    custom_id text not null,
    key       text not null,
    state     text not null default 'pending',  -- pending | answered | failed
    primary key (batch_uid, custom_id)
);
create index if not exists llm_batch_keys_key_idx on {q}.llm_batch_keys (key);
"""),
        (11, f"""
-- Provenance (issue 9): which node and column asked for a cached answer, and the prompt itself
-- (llm.store_prompts: true by default; with false only the key, a hash of fingerprint + prompt,
-- is kept). invalidated_at says when pg_llm.invalidate marked a row invalid.
alter table {q}.llm_results
    add column if not exists node_id        text,
    add column if not exists column_name    text,
    add column if not exists prompt         text,
    add column if not exists invalidated_at timestamptz;
create index if not exists llm_results_node_idx on {q}.llm_results (node_id, column_name);
"""),
        (12, f"""
-- Claim leases (issue 16.1-2, decision 0022): a claimer sends requests for its keys only while it
-- holds a lease on them, renewed with each heartbeat; nobody takes a claim over before its
-- lease_until (server time), so a paused run, or one whose claim session was terminated, stops
-- sending before another run may pay for its keys. NULL: a claimer from before this step.
alter table {q}.llm_claims add column if not exists lease_until timestamptz;
"""),
        (13, f"""
-- Invalidations outlive the rows they marked (issue 16.5, decision 0024): a journal on another
-- machine may still hold an answer invalidated here, and a new answer clears llm_results'
-- invalidated_at. A journal entry created at or before its key's invalidated_at is never served.
-- One row per key ever invalidated (the last time); purge_audit keeps them.
create table if not exists {q}.llm_invalidations (
    key            text primary key,
    invalidated_at timestamptz not null
);
insert into {q}.llm_invalidations (key, invalidated_at)
    select key, invalidated_at from {q}.llm_results where invalidated_at is not null
    on conflict (key) do nothing;
"""),
        (14, f"""
-- Provider prompt caching (issue 17.3, decision 0028): of a request's prompt_tokens, those read from
-- the provider's prompt cache (billed at a discount) and written to it (Anthropic, at a premium);
-- prompt_cache_saved_usd = its cost had every input token been billed at the input price, minus
-- cost_usd (negative when a write was never read back). llm_results keeps the tokens of the
-- request that paid for the answer.
alter table {q}.llm_calls
    add column if not exists cached_tokens          integer not null default 0,
    add column if not exists cache_write_tokens     integer not null default 0,
    add column if not exists prompt_cache_saved_usd numeric not null default 0;
alter table {q}.llm_results
    add column if not exists cached_tokens      integer not null default 0,
    add column if not exists cache_write_tokens integer not null default 0;
"""),
        (15, f"""
-- One source of truth for the counters (issue 17.1, decision 0026): llm_calls holds one row per
-- paid HTTP request or batch line, with the column that asked; llm_runs' requests / tokens / cost /
-- cache_hits / saved are recomputed from it (run_totals.py) when a fill ends and when a crashed
-- run is settled. call_id: the engine's id of the request, so a row replayed from a dead process's
-- spool (logs.py) is never written twice. settled_at: when the totals were last derived.
alter table {q}.llm_calls add column if not exists column_name text;
alter table {q}.llm_calls add column if not exists call_id text;
alter table {q}.llm_runs add column if not exists settled_at timestamptz;
"""),
        (17, f"""
-- Error history (issue 18): llm_errors stays the current dead letter per (key, node) that the join,
-- the reports and resolve_errors read; llm_error_history gets one row per failed attempt-set, with
-- node, column and run, so "why did this row fail last night" can be answered after a retry.
-- llm_batch_keys.prompt: a batch's prompts (llm.store_prompts) reach llm_results when collected.
alter table {q}.llm_errors add column if not exists column_name text;
create table if not exists {q}.llm_error_history (
    id          bigserial primary key,
    ts          timestamptz not null default now(),
    key         text not null,
    node_id     text not null default '',
    column_name text,
    model       text,
    error_kind  text not null,
    message     text,
    attempts    integer not null default 0,
    run_id      text
);
create index if not exists llm_error_history_key_idx on {q}.llm_error_history (key, ts);
create index if not exists llm_error_history_ts_idx on {q}.llm_error_history (ts);
alter table {q}.llm_batch_keys add column if not exists prompt text;
"""),
        (18, f"""
-- Embeddings (issue 19, decision 0030): one row per distinct (model, dimensions, text) key, the
-- vector as real[] (4 bytes a float, binary, TOASTed out of line): not JSON text in llm_results, so
-- a scan of llm_results never reads 1,536 floats a row. The join casts vec to vector(dims) where
-- pgvector is installed; the same table serves databases without it.
create table if not exists {q}.llm_embeddings (
    key           text primary key,
    model         text not null,
    dims          integer not null,
    vec           real[] not null,
    prompt_tokens integer not null default 0,
    truncated     boolean not null default false,
    run_id        text,
    created_at    timestamptz not null default now()
);
"""),
        (19, f"""
-- Evaluation as data and guaranteed cascades (issue 21.2/21.3, decision 0033). llm_evaluations: one
-- row per evaluation of a column against a golden relation, per model that answered its rows
-- (accuracy, cost per row, latency, accuracy by confidence decile). llm_cascade_calibrations: the
-- sample, the thresholds chosen and the agreement measured for a guaranteed cascade, by strategy and
-- basis (the fingerprint of its members and prompt): reused while the basis is unchanged.
create table if not exists {q}.llm_evaluations (
    id              bigserial primary key,
    evaluated_at    timestamptz not null default now(),
    node_id         text not null,
    column_name     text not null,
    golden          text not null,
    model           text not null,
    strategy        text,
    task            text,
    rows_compared   integer not null,
    accuracy        double precision,
    cost_per_row    double precision,
    latency_ms      double precision,
    calibration     jsonb not null default '[]'::jsonb
);
create index if not exists llm_evaluations_model_idx on {q}.llm_evaluations (model, evaluated_at);
create table if not exists {q}.llm_cascade_calibrations (
    strategy              text not null,
    basis                 text not null,
    created_at            timestamptz not null default now(),
    models                jsonb not null,
    target_accuracy       double precision not null,
    failure_probability   double precision not null,
    sample_size           integer not null,
    thresholds            jsonb not null,
    measured_agreement    double precision not null,
    agreement_lower_bound double precision not null,
    oracle_share          double precision not null,
    sample_cost_usd       double precision not null default 0,
    stages                jsonb not null,
    sample                jsonb not null,
    primary key (strategy, basis)
);
"""),
        (20, f"""
-- Embedding vectors as pgvector's own type where the extension is installed in this database (issue
-- 19.4, decision 0040): its binary COPY input is a copy of the floats, real[]'s a function call per
-- float (~2.3x the Postgres CPU of writing 100,000 vectors), and the model's cast to vector(d) has
-- nothing left to convert. Without the extension (or installed only later) vec stays real[]; readers
-- cast it (::real[], ::vector(d)) and work with both.
do $$
declare vector_type text;
begin
    select format('%I.vector', n.nspname) into vector_type
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector';
    if vector_type is not null then
        execute format('alter table {q}.llm_embeddings alter column vec type %s using vec::%s',
                       vector_type, vector_type);
    end if;
end $$;
"""),
    ]
