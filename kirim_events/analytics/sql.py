"""The analytics helpers as DuckDB views: the same rules as the Polars code, written in SQL.

Each function returns one ``SELECT`` over the views ``events`` and ``deliveries`` (and,
for duplicate counts, a relation of ``(event_key, n_copies)``). The Polars modules document
the rules; any change there must be mirrored here, and the tests compare both row for row.
Timestamps are TIMESTAMPTZ; days are taken in UTC whatever the session time zone.
"""

from __future__ import annotations

from kirim_events.analytics._common import (
    ASSIGNMENT_ORDER,
    CHAIN_ROUNDS,
    LABEL_OF,
    ORDER,
    OTHER_ERROR,
    STATUS_EVENT_TYPES,
    STATUS_ORDER,
    STATUS_RANK,
    as_utc,
)
from kirim_events.analytics.conversations import OPENING_TYPES
from kirim_events.analytics.health import MAX_ATTEMPT
from kirim_events.events import TYPE_ALIASES
from kirim_events.sqltext import quote_literal, timestamp_literal
from kirim_events.timearg import TimeLike

__all__ = ["analytics_views"]


def _ascending(columns: tuple[str, ...]) -> str:
    """An ORDER BY list with each direction written out: DuckDB reads a bare column in the
    session's ``default_order``, which a caller's ``lake.connect()`` session may set to
    DESC (the status history then ran backwards, and the cycles and quantiles were wrong)."""
    return ", ".join(f"{c} ASC" for c in columns)


_ORDER = _ascending(ORDER)
_STATUS_ORDER = _ascending(STATUS_ORDER)
_ASSIGNMENT_ORDER = _ascending(ASSIGNMENT_ORDER)


def _in(values: tuple[str, ...] | list[str]) -> str:
    return "(" + ", ".join(quote_literal(v) for v in values) + ")"


def _cut(as_of: TimeLike | None, column: str = "occurred_at") -> str:
    if as_of is None:
        return ""
    return f" AND {column} <= {timestamp_literal(as_utc(as_of))}"


def _seconds(later: str, earlier: str) -> str:
    return f"(epoch_us({later}) - epoch_us({earlier}))::DOUBLE / 1000000.0"


def _with_copies(copies: str | None) -> str:
    """The head of a ``WITH``: ``copies`` as the relation ``cp``, computed once however
    often the query reads the events (nothing when there are no copies)."""
    return "WITH" if copies is None else f"WITH cp AS MATERIALIZED ({copies}),"


def _events_with_dups(copies: str | None) -> str:
    """The events with their duplicate count; the query must start with :func:`_with_copies`.

    A query that reads them twice repeats this instead of naming one CTE: DuckDB would
    materialize every column of every row of it (a third of the CPU time of the timelines
    and lifecycles views at 10M events), while each repeated scan reads only its own columns
    and, where it keeps one type, only that type's partition.
    """
    if copies is None:
        return "(SELECT e.*, NULL::BIGINT AS _dups FROM events e)"
    return (
        "(SELECT e.*, coalesce(c.n_copies - 1, 0)::BIGINT AS _dups FROM events e "
        "LEFT JOIN cp c ON c.event_key = e.event_key)"
    )


def _rank_case(column: str) -> str:
    whens = " ".join(f"WHEN {quote_literal(s)} THEN {r}" for s, r in STATUS_RANK.items())
    return f"CASE {column} {whens} END"


def _status_case(column: str) -> str:
    whens = " ".join(f"WHEN {r} THEN {quote_literal(s)}" for s, r in STATUS_RANK.items())
    return f"CASE {column} {whens} END"


def _status_rows(as_of: TimeLike | None, copies: str | None) -> str:
    return f"""
    SELECT s.*, {_rank_case("status")}::TINYINT AS _rank
    FROM {_events_with_dups(copies)} s
    WHERE type IN {_in(STATUS_EVENT_TYPES)} AND message_id IS NOT NULL
      AND status IN {_in(list(STATUS_RANK))}{_cut(as_of)}"""


def _late(source: str) -> str:
    return f"""
    SELECT x.*,
      coalesce(received_at > min(received_at) OVER (PARTITION BY message_id ORDER BY {_STATUS_ORDER}
        ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING), false) AS _late
    FROM ({source}) x"""


def _status_events(as_of: TimeLike | None, copies: str | None) -> str:
    return _late(_status_rows(as_of, copies))


def message_timelines_sql(as_of: TimeLike | None = None, copies: str | None = None) -> str:
    """SELECT for the ``message_timelines`` view (rules and fast path: ``timelines.py``)."""
    statuses = list(STATUS_RANK)
    labels = " ".join(
        f"WHEN {quote_literal(k)} THEN {quote_literal(v)}" for k, v in LABEL_OF.items()
    )
    spread = ",\n        ".join(
        f"min(occurred_at) FILTER (WHERE status = {quote_literal(st)}) AS _o_{st}, "
        f"min(received_at) FILTER (WHERE status = {quote_literal(st)}) AS _r_{st}"
        for st in statuses
    )
    present = " + ".join(f"(_o_{st} IS NOT NULL)::INTEGER" for st in statuses)
    pairs = " OR ".join(
        f"coalesce(_o_{a} < _o_{b} AND _r_{a} > _r_{b}, false)"
        for a in statuses
        for b in statuses
        if a != b
    )
    rows = _status_rows(as_of, copies)
    multi = "SELECT message_id FROM f WHERE _multi"
    return f"""
    {_with_copies(copies)}
    g AS (
      SELECT message_id,
        min(phone_number_id) AS phone_number_id, min(recipient_id) AS recipient_id,
        min(conversation_id) AS conversation_id,
        {spread},
        min(error_code) FILTER (WHERE status = 'failed') AS _error_code,
        min(error_title) FILTER (WHERE status = 'failed') AS _error_title,
        max(_rank) AS _rank,
        count(*)::BIGINT AS n_events,
        sum(_dups)::BIGINT AS n_duplicates,
        min(received_at) AS first_received_at, max(received_at) AS last_received_at
      FROM ({rows}) GROUP BY message_id
    ),
    f AS (SELECT g.*, n_events > ({present}) AS _multi, ({pairs}) AS _late_fast FROM g),
    slow AS (
      SELECT message_id, bool_or(_late) AS _late_slow,
        first(error_code ORDER BY {_STATUS_ORDER}) FILTER (WHERE status = 'failed')
          AS _error_code_slow,
        first(error_title ORDER BY {_STATUS_ORDER}) FILTER (WHERE status = 'failed')
          AS _error_title_slow
      FROM ({_late(f"SELECT * FROM ({rows}) WHERE message_id IN ({multi})")})
      GROUP BY message_id
    ),
    h AS (
      SELECT f.*, _o_sent AS sent_at, _o_delivered AS delivered_at, _o_read AS read_at,
        _o_failed AS failed_at,
        CASE WHEN _multi THEN _late_slow ELSE _late_fast END AS out_of_order,
        CASE WHEN _multi THEN _error_code_slow ELSE _error_code END AS error_code,
        CASE WHEN _multi THEN _error_title_slow ELSE _error_title END AS error_title
      FROM f LEFT JOIN slow USING (message_id)
    )
    SELECT message_id, phone_number_id, recipient_id, conversation_id,
      sent_at, delivered_at, read_at, failed_at,
      {_status_case("_rank")} AS status,
      error_code, error_title,
      CASE WHEN error_code IS NULL THEN NULL ELSE CASE error_code {labels}
        ELSE {quote_literal(OTHER_ERROR)} END END AS error_label,
      n_events, n_duplicates, out_of_order,
      (read_at IS NOT NULL AND delivered_at IS NULL) AS read_without_delivered,
      (failed_at IS NOT NULL AND (delivered_at IS NOT NULL OR read_at IS NOT NULL))
        AS failed_after_delivered,
      (sent_at IS NULL) AS never_sent,
      (sent_at IS NOT NULL OR delivered_at IS NOT NULL OR read_at IS NOT NULL) AS reached_sent,
      (delivered_at IS NOT NULL OR read_at IS NOT NULL) AS reached_delivered,
      {_seconds("delivered_at", "sent_at")} AS time_to_deliver,
      {_seconds("read_at", "sent_at")} AS time_to_read,
      first_received_at, last_received_at
    FROM h"""


def message_status_history_sql(as_of: TimeLike | None = None, copies: str | None = None) -> str:
    """SELECT for the ``message_status_history`` view (rules: ``timelines.py``)."""
    window = f"PARTITION BY message_id ORDER BY {_STATUS_ORDER}"
    return f"""
    {_with_copies(copies)}
    s AS ({_status_events(as_of, copies)}),
    h AS (
      SELECT s.*, row_number() OVER ({window})::BIGINT AS seq,
        max(_rank) OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS _before,
        max(_rank) OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS _after
      FROM s
    )
    SELECT message_id, seq, event_key, status, occurred_at, received_at,
      {_status_case("_before")} AS previous_status,
      {_status_case("_after")} AS current_status,
      (_before IS NULL OR _rank > _before) AS is_upgrade,
      _late AS arrived_late, error_code, _dups AS n_duplicates
    FROM h ORDER BY message_id ASC, seq ASC"""


# the opening was not seen: no event that can open a conversation at its first instant
# (conversations.py, missing_opening)
_FIRST_OPENING = f"min(occurred_at) FILTER (WHERE type IN {_in(OPENING_TYPES)}) AS _first_opening"
_MISSING_OPENING = "(_first_opening IS NULL OR _first_opening > opened_at) AS missing_opening"


def _since_opening(later: str) -> str:
    """Seconds from the opening to ``later``; null when the opening was not seen."""
    return f"CASE WHEN missing_opening THEN NULL ELSE {_seconds(later, 'opened_at')} END"


def _conversation_rows(as_of: TimeLike | None, copies: str | None, kind: str | None = None) -> str:
    """The events that name a conversation (of type ``kind`` only, when given)."""
    only = "" if kind is None else f" AND type = {quote_literal(kind)}"
    return f"""
      SELECT * FROM {_events_with_dups(copies)} e
      WHERE conversation_id IS NOT NULL{only}{_cut(as_of)}"""


def _chain_ctes(as_of: TimeLike | None, copies: str | None) -> str:
    """CTEs ending in ``chained``: the assignments with ``_chain`` (conversations.py,
    ``_with_chain``); the query must start with :func:`_with_copies`. The linked pairs are
    computed once (``MATERIALIZED``: each round reads them) and are few."""
    rows = _conversation_rows(as_of, copies, "conversation.assigned")
    plain = (  # the pairs need no duplicate counts
        "SELECT * FROM events WHERE conversation_id IS NOT NULL "
        f"AND type = 'conversation.assigned'{_cut(as_of)}"
    )
    instant = "conversation_id, occurred_at"
    rounds = [
        f"_c1 AS (SELECT {instant}, event_key, 1::BIGINT AS _chain FROM _links "
        f"GROUP BY {instant}, event_key)"
    ]
    for n in range(2, CHAIN_ROUNDS + 1):
        rounds.append(
            f"""_c{n} AS (
      SELECT l.conversation_id, l.occurred_at, l.event_key,
        (1 + max(coalesce(c._chain, 0)))::BIGINT AS _chain
      FROM _links l LEFT JOIN _c{n - 1} c ON c.conversation_id = l.conversation_id
        AND c.occurred_at = l.occurred_at AND c.event_key = l._p
      GROUP BY l.conversation_id, l.occurred_at, l.event_key)"""
        )
    joined = ",\n    ".join(rounds)
    return f"""
    _links AS MATERIALIZED (
      SELECT y.conversation_id, y.occurred_at, y.event_key, x.event_key AS _p
      FROM (SELECT {instant}, event_key, previous_user_id FROM ({plain})
        WHERE previous_user_id IS NOT NULL) y
      JOIN (SELECT {instant}, event_key, user_id FROM ({plain})) x
        ON x.conversation_id = y.conversation_id AND x.occurred_at = y.occurred_at
        AND x.user_id = y.previous_user_id AND x.event_key <> y.event_key
    ),
    {joined},
    chained AS (
      SELECT r.*, coalesce(c._chain, 0)::BIGINT AS _chain
      FROM ({rows}) r LEFT JOIN _c{CHAIN_ROUNDS} c ON c.conversation_id = r.conversation_id
        AND c.occurred_at = r.occurred_at AND c.event_key = r.event_key
    ),"""


def _in_cycles(rows: str) -> str:
    """``rows`` with the cycle of each: an as-of join with the CTE ``marks``."""
    return f"""
      SELECT r.*, (1 + coalesce(m.k, 0))::BIGINT AS cycle
      FROM ({rows}) r ASOF LEFT JOIN marks m
        ON r.conversation_id = m.conversation_id AND r.occurred_at > m.occurred_at"""


def conversation_cycles_sql(as_of: TimeLike | None = None, copies: str | None = None) -> str:
    """SELECT for the ``conversation_cycles`` view (rules: ``conversations.py``).

    Each event gets its cycle from an as-of join with the running count of closes per
    close instant; then, as in the Polars helper, all events, the assignments and the
    closes are aggregated apart (only the latter two are ordered) and joined.
    """
    closes = _conversation_rows(as_of, copies, "conversation.closed")
    return f"""
    {_with_copies(copies)}
    instants AS (
      SELECT conversation_id, occurred_at, 1 AS n
      FROM ({closes}) GROUP BY conversation_id, occurred_at
    ),
    marks AS (
      SELECT conversation_id, occurred_at,
        sum(n) OVER (PARTITION BY conversation_id ORDER BY occurred_at ASC)::BIGINT AS k
      FROM instants
    ),
    base AS (
      SELECT conversation_id, cycle, min(occurred_at) AS opened_at,
        max(occurred_at) AS last_event_at, count(*)::BIGINT AS n_events,
        sum(_dups)::BIGINT AS n_duplicates, {_FIRST_OPENING}
      FROM ({_in_cycles(_conversation_rows(as_of, copies))}) GROUP BY conversation_id, cycle
    ),
    {_chain_ctes(as_of, copies)}
    a AS (
      SELECT t.*, previous_user_id IS DISTINCT FROM lag(user_id) OVER (
          PARTITION BY conversation_id ORDER BY {_ASSIGNMENT_ORDER}) AS _missing
      FROM ({_in_cycles("SELECT * FROM chained")}) t
    ),
    ag AS (
      SELECT conversation_id, cycle,
        min(occurred_at) FILTER (WHERE user_id IS NOT NULL) AS _first_assigned,
        first(_missing ORDER BY {_ASSIGNMENT_ORDER}) AS _missing_first,
        count(user_id)::BIGINT AS n_assignments,
        count(DISTINCT user_id)::BIGINT AS n_assignees,
        last(user_id ORDER BY {_ASSIGNMENT_ORDER}) AS assignee_id,
        count(*) FILTER (WHERE _missing)::BIGINT AS n_missing_assignments
      FROM a GROUP BY conversation_id, cycle
    ),
    cg AS (
      SELECT conversation_id, cycle, count(*)::BIGINT AS n_closes,
        max(occurred_at) AS closed_at,
        last(closed_by_user_id ORDER BY {_ORDER}) AS closed_by_user_id
      FROM ({_in_cycles(closes)}) GROUP BY conversation_id, cycle
    ),
    ag1 AS (  -- the flag belongs to the cycle of the conversation's first assignment event
      SELECT ag.*EXCLUDE (_missing_first), _missing_first
        AND cycle = min(cycle) OVER (PARTITION BY conversation_id) AS _missing_first
      FROM ag
    ),
    j AS (
      SELECT base.*, ag1.*EXCLUDE (conversation_id, cycle),
        cg.*EXCLUDE (conversation_id, cycle),
        coalesce(ag1._missing_first, false) AS missing_first_assignment,
        CASE WHEN ag1._missing_first THEN NULL ELSE ag1._first_assigned END AS first_assigned_at
      FROM base
      LEFT JOIN ag1 USING (conversation_id, cycle)
      LEFT JOIN cg USING (conversation_id, cycle)
    )
    SELECT conversation_id, cycle, opened_at, first_assigned_at,
      coalesce(n_assignments, 0) AS n_assignments, coalesce(n_assignees, 0) AS n_assignees,
      assignee_id, coalesce(n_closes, 0) AS n_closes, closed_at, closed_by_user_id,
      (n_closes IS NULL) AS is_open, (cycle > 1) AS is_reopen, missing_first_assignment,
      missing_opening, coalesce(n_missing_assignments, 0) AS n_missing_assignments,
      {_since_opening("first_assigned_at")} AS time_to_first_assignment,
      {_since_opening("closed_at")} AS time_to_close,
      n_events, n_duplicates, last_event_at
    FROM (SELECT j.*, {_MISSING_OPENING} FROM j)
    ORDER BY conversation_id ASC, cycle ASC"""


def conversation_lifecycles_sql(as_of: TimeLike | None = None, copies: str | None = None) -> str:
    """SELECT for the ``conversation_lifecycles`` view (rules: ``conversations.py``).

    Like the Polars helper, only assignments and closes are ordered; the rest is one
    aggregation per conversation.
    """
    return f"""
    {_with_copies(copies)}
    base AS (
      SELECT conversation_id, min(occurred_at) AS opened_at, max(occurred_at) AS last_event_at,
        count(*)::BIGINT AS n_events, sum(_dups)::BIGINT AS n_duplicates, {_FIRST_OPENING}
      FROM ({_conversation_rows(as_of, copies)}) GROUP BY conversation_id
    ),
    {_chain_ctes(as_of, copies)}
    a AS (
      SELECT r.*, previous_user_id IS DISTINCT FROM lag(user_id) OVER (
          PARTITION BY conversation_id ORDER BY {_ASSIGNMENT_ORDER}) AS _missing
      FROM chained r
    ),
    ag AS (
      SELECT conversation_id,
        min(occurred_at) FILTER (WHERE user_id IS NOT NULL AND previous_user_id IS NULL)
          AS _first_root,
        first(_missing ORDER BY {_ASSIGNMENT_ORDER}) AS _first_missing,
        count(user_id)::BIGINT AS n_assignments,
        count(DISTINCT user_id)::BIGINT AS n_assignees,
        last(user_id ORDER BY {_ASSIGNMENT_ORDER}) AS assignee_id,
        count(*) FILTER (WHERE _missing)::BIGINT AS n_missing_assignments
      FROM a GROUP BY conversation_id
    ),
    c AS ({_conversation_rows(as_of, copies, "conversation.closed")}),
    cg AS (
      SELECT conversation_id, count(*)::BIGINT AS n_closes, max(occurred_at) AS closed_at,
        last(closed_by_user_id ORDER BY {_ORDER}) AS closed_by_user_id
      FROM c GROUP BY conversation_id
    ),
    bl AS (
      SELECT c.conversation_id,
        count(DISTINCT c.occurred_at) FILTER (WHERE c.occurred_at < b.last_event_at)::BIGINT
          AS _before_last
      FROM c JOIN base b ON b.conversation_id = c.conversation_id GROUP BY c.conversation_id
    ),
    j AS (
      SELECT base.*, ag._first_root,
        coalesce(ag._first_missing, false) AS missing_first_assignment,
        coalesce(ag.n_assignments, 0) AS n_assignments,
        coalesce(ag.n_assignees, 0) AS n_assignees, ag.assignee_id,
        coalesce(ag.n_missing_assignments, 0) AS n_missing_assignments,
        coalesce(cg.n_closes, 0) AS n_closes, cg.closed_at, cg.closed_by_user_id,
        coalesce(bl._before_last, 0) + 1 AS n_cycles,
        (cg.closed_at IS NULL OR base.last_event_at > cg.closed_at) AS is_open
      FROM base
      LEFT JOIN ag ON ag.conversation_id = base.conversation_id
      LEFT JOIN cg ON cg.conversation_id = base.conversation_id
      LEFT JOIN bl ON bl.conversation_id = base.conversation_id
    ),
    h AS (
      SELECT j.*,
        CASE WHEN missing_first_assignment THEN NULL ELSE _first_root END AS first_assigned_at,
        {_MISSING_OPENING}
      FROM j
    )
    SELECT conversation_id, opened_at, first_assigned_at, n_assignments, n_assignees,
      assignee_id, n_closes, n_cycles - 1 AS n_reopens, n_cycles, closed_at,
      closed_by_user_id, is_open,
      {_since_opening("first_assigned_at")} AS time_to_first_assignment,
      CASE WHEN is_open THEN NULL ELSE {_since_opening("closed_at")} END AS time_to_close,
      missing_first_assignment, missing_opening, n_missing_assignments, n_events,
      n_duplicates, last_event_at
    FROM h"""


def _canonical(column: str) -> str:
    """``column`` under the lake's name of each type (receipts stored before they were)."""
    whens = " ".join(
        f"WHEN {quote_literal(a)} THEN {quote_literal(c)}" for a, c in TYPE_ALIASES.items()
    )
    return f"CASE {column} {whens} ELSE {column} END AS {column}"


def _quantile(values: str, q: float) -> str:
    """Linear quantile of the sorted list ``values`` as Polars computes it, low + (high -
    low) * fraction (DuckDB's quantile_cont weighs the two ends instead, which differs in
    the last bits of a double)."""
    pos = f"((len({values}) - 1)::DOUBLE * {q!r}::DOUBLE)"  # a bare 0.9 is DECIMAL in DuckDB
    low = f"{values}[floor({pos})::BIGINT + 1]"
    high = f"{values}[least(floor({pos})::BIGINT + 2, len({values}))]"
    return f"({low}::DOUBLE + ({high} - {low})::DOUBLE * ({pos} - floor({pos})))"


def delivery_health_sql(as_of: TimeLike | None = None) -> str:
    """SELECT for the ``delivery_health`` view (rules: ``health.py``)."""
    attempts = ",\n        ".join(
        f"count(*) FILTER (WHERE a = {n})::BIGINT AS n_attempt_{n}" for n in range(1, MAX_ATTEMPT)
    )
    late = "(epoch_us(received_at) - epoch_us(occurred_at))"  # seconds last: see health.py
    return f"""
    WITH d AS (
      SELECT CAST(timezone('UTC', received_at) AS DATE) AS day, {_canonical("event_type")},
        greatest(coalesce(attempt, 1), 1) AS a, outcome
      FROM deliveries WHERE origin = 'webhook'{_cut(as_of, "received_at")}
    ),
    pd AS (
      SELECT day, event_type, count(*)::BIGINT AS deliveries,
        {attempts},
        count(*) FILTER (WHERE a >= {MAX_ATTEMPT})::BIGINT AS n_attempt_{MAX_ATTEMPT},
        (count(*) FILTER (WHERE a > 1))::DOUBLE / count(*)::DOUBLE AS retry_rate,
        max(a)::BIGINT AS max_attempt,
        count(*) FILTER (WHERE outcome = 'duplicate')::BIGINT AS duplicates,
        count(*) FILTER (WHERE outcome = 'rejected')::BIGINT AS rejected,
        count(*) FILTER (WHERE outcome = 'quarantined')::BIGINT AS quarantined
      FROM d GROUP BY day, event_type
    ),
    pl AS (
      SELECT CAST(timezone('UTC', received_at) AS DATE) AS day, type AS event_type,
        count(*)::BIGINT AS n_events,
        list_sort(list({late}) FILTER (WHERE {late} IS NOT NULL), 'ASC') AS _s
      FROM events WHERE origin = 'webhook'{_cut(as_of)}{_cut(as_of, "received_at")}
      GROUP BY ALL
    ),
    pe AS (
      SELECT day, event_type, n_events,
        {_quantile("_s", 0.5)} / 1000000.0 AS lateness_p50,
        {_quantile("_s", 0.9)} / 1000000.0 AS lateness_p90,
        _s[-1]::DOUBLE / 1000000.0 AS lateness_max
      FROM pl
    )
    SELECT * FROM pd FULL OUTER JOIN pe USING (day, event_type)
    ORDER BY day ASC, event_type ASC NULLS LAST"""


def analytics_views(*, as_of: TimeLike | None = None, copies: str | None = None) -> dict[str, str]:
    """View name -> SELECT, for every analytics helper.

    Parameters
    ----------
    as_of
        Restrict every view to events that happened by this instant.
    copies
        SQL relation with ``(event_key, n_copies)`` (received copies per event, the first
        included); when None, ``n_duplicates`` is NULL.

    ``conversation_cycles`` uses an ASOF join: over relations whose size DuckDB cannot
    estimate (pyarrow datasets), ``SET asof_loop_join_threshold = 0`` on the connection, as
    :meth:`Lake.connect <kirim_events.lake.Lake.connect>` does, or DuckDB may run it as a
    nested loop.
    """
    return {
        "message_timelines": message_timelines_sql(as_of, copies),
        "message_status_history": message_status_history_sql(as_of, copies),
        "conversation_lifecycles": conversation_lifecycles_sql(as_of, copies),
        "conversation_cycles": conversation_cycles_sql(as_of, copies),
        "delivery_health": delivery_health_sql(as_of),
    }
