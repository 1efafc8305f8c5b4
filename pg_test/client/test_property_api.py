"""Property-based test of the whole public SQL API (Hypothesis, stateful).

A RuleBasedStateMachine calls every public function with random and hostile
arguments: extreme and infinite times ('infinity', year 294276, '400000
years', negative intervals), huge and deeply nested JSON, odd Unicode and
quotes in names, NULLs everywhere, unknown and foreign ids, interleaved with
pops, acks, fails and ticks. Every argument is a bound parameter with an
explicit cast in the SQL text; nothing is pasted into SQL.

After every step it checks what must hold whatever the input was:

  1. an error carries a SQLSTATE that is not an internal error (XX...), not a
     lost connection (08...), not a crash or cancellation (57...) and not a
     system error (58...); each distinct (function, sqlstate) is recorded;
  2. no job is lost or in two places: every id the test got back is in
     exactly one of queue.jobs / queue.finished_jobs, unless one of the
     deleting functions removed it (and then it was a job that function may
     delete; a call that fails deletes nothing);
  3. a serial group never has two jobs processing, and the unique index
     jobs_group_active is there and valid;
  4. after queue_tick(), queue_stats(q) and queue_size(q) agree with the
     jobs table for each of the test's queues (polled, as the background
     worker flushes the counters every tick);
  5. the calls a worker or a dashboard makes all the time still succeed:
     queue_pop(q) (rolled back), queue_tick(), queue_metrics(), queue_stats(),
     queue_health(), queue_list(), queue_prometheus(), queue_timeline() and
     the per-queue readers.

Every example works in its own namespace (queue, group, worker and schedule
names start with a prefix unique to the run and the example) and removes
everything it created when it ends. Some functions are global by design
(queue_cleanup, queue_purge_dead(NULL), queue_reap_workers, queue_tick): the
real-client tests run one at a time, so that disturbs no other test.

Runtime: QUEUE_PROPERTY_EXAMPLES (default 40) examples of up to
QUEUE_PROPERTY_STEPS (default 40) steps, about a minute on two cores.
QUEUE_PROPERTY_SHRINK=1 lets Hypothesis shrink a failure (slow: every step
runs SQL).
"""
import json
import os
import re
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from conftest import connect, remove_namespace, wait_for

EXAMPLES = int(os.environ.get("QUEUE_PROPERTY_EXAMPLES", "40"))
STEPS = int(os.environ.get("QUEUE_PROPERTY_STEPS", "40"))
SHRINK = os.environ.get("QUEUE_PROPERTY_SHRINK") == "1"

# SQLSTATE classes no input may ever cause: internal error, connection lost,
# operator intervention (crash of a backend, statement_timeout), system error.
FORBIDDEN_CLASSES = ("XX", "08", "57", "58")
STATEMENT_TIMEOUT = "30s"
COUNTER_TIMEOUT = 10.0

RUN_PREFIX = "prop-" + uuid.uuid4().hex[:6] + "-"
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,57}")


class Tally:
    """What the whole run did: calls, rejected calls, and each distinct
    (function, sqlstate) with how often it was seen and its first message."""

    def __init__(self):
        self.calls = 0
        self.rejected = 0
        self.examples = 0
        self.errors = Counter()
        self.messages = {}
        self.failures = []   # what broke a check, in order

    def reject(self, fname, sqlstate, message):
        """Count one call refused with an error."""
        self.rejected += 1
        self.errors[(fname, sqlstate)] += 1
        self.messages.setdefault((fname, sqlstate), message)

    def summary(self):
        """The one line printed at the end of the test."""
        pairs = ", ".join(f"{f} {s} x{n}" for (f, s), n in sorted(self.errors.items()))
        return (f"property test: {self.calls} calls, {self.rejected} rejected, "
                f"{len(self.errors)} distinct (function, sqlstate) failures: {pairs}")


TALLY = Tally()


def fail(message):
    """Fail the test, and keep the message for the summary (Hypothesis may
    replace the error with its own when a replay does not reproduce it)."""
    TALLY.failures.append(message)
    raise AssertionError(message)


def expect(condition, message):
    """fail(message) unless condition holds."""
    if not condition:
        fail(message)


def short(value, limit=160):
    """repr() cut to `limit` characters, for assertion messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


# ---------------------------------------------------------------------------
# Symbolic arguments: resolved against the machine's state when the call
# runs, so that printed steps stay short and readable.
# ---------------------------------------------------------------------------

class Omit:
    """The argument is not passed at all: the SQL default applies."""

    def __repr__(self):
        return "OMIT"


OMIT = Omit()


class Own:
    """A name in this example's namespace: its unique prefix + suffix."""

    def __init__(self, suffix):
        self.suffix = suffix

    def resolve(self, machine):
        return machine.prefix + self.suffix

    def __repr__(self):
        return f"Own({self.suffix!r})"


class JobRef:
    """The i-th job id this example has seen (mod how many): live, final,
    deleted, or a job of the example's 'foreign' queue."""

    def __init__(self, i):
        self.i = i

    def resolve(self, machine):
        return machine.known_ids[self.i % len(machine.known_ids)]

    def __repr__(self):
        return f"JobRef({self.i})"


class ClaimRef:
    """The i-th claim (id, attempt) this example got from queue_pop; its
    attempt is what a CLAIMED attempt argument of the same call resolves to."""

    def __init__(self, i):
        self.i = i

    def resolve(self, machine):
        job_id, attempt = machine.claims[self.i % len(machine.claims)]
        machine.current_attempt = attempt
        return job_id

    def __repr__(self):
        return f"ClaimRef({self.i})"


class Claimed:
    """The attempt of the claim named earlier in the same call (1 if none)."""

    def resolve(self, machine):
        return machine.current_attempt

    def __repr__(self):
        return "CLAIMED"


CLAIMED = Claimed()


class Unknown:
    """An id no job has: far above every id seen."""

    def resolve(self, machine):
        return max(machine.known_ids) + 1_000_000_007

    def __repr__(self):
        return "UNKNOWN_ID"


class Rel:
    """A timestamptz `seconds` from now, as text."""

    def __init__(self, seconds):
        self.seconds = seconds

    def resolve(self, machine):
        return (datetime.now(timezone.utc) + timedelta(seconds=self.seconds)).isoformat()

    def __repr__(self):
        return f"Rel({self.seconds:+}s)"


class Big:
    """A large argument (multi-MB text, deeply nested JSON) built once, on
    first use, and printed as its label."""

    def __init__(self, label, build):
        self.label = label
        self.build = build
        self.value = None

    def resolve(self, machine):
        if self.value is None:
            self.value = self.build()
        return self.value

    def __repr__(self):
        return f"<{self.label}>"


def resolve(value, machine):
    """The plain Python value of a (possibly symbolic, possibly nested) argument."""
    if isinstance(value, list):
        return [resolve(v, machine) for v in value]
    if hasattr(value, "resolve"):
        return value.resolve(machine)
    return value


# ---------------------------------------------------------------------------
# Argument values. Each argument has a sane side (what a correct client
# passes: often nothing, so the SQL default applies) and a hostile side
# (NULL, extremes, garbage). A call takes at most two arguments from their
# hostile side, so that each call probes something and most pushes still
# go through: the hostile values Postgres accepts are the interesting ones.
# ---------------------------------------------------------------------------

class V:
    """The two sides of an argument, and how often it is the hostile one
    compared with the call's other arguments."""

    def __init__(self, sane, hostile, weight=1):
        self.sane = sane
        self.hostile = hostile
        self.weight = weight


def weighted(*choices):
    """One of the (weight, strategy) pairs, chosen in proportion to weight."""
    total = sum(w for w, _ in choices)

    def pick(n):
        for w, strategy in choices:
            if n < w:
                return strategy
            n -= w
        raise AssertionError("unreachable")

    return st.integers(0, total - 1).flatmap(pick)


def optional(sane, omitted=60):
    """An optional argument's sane side: usually omitted."""
    return weighted((omitted, st.just(OMIT)), (100 - omitted, sane))


def or_null(hostile, null=15):
    """A hostile side: NULL now and then, else a hostile value."""
    return weighted((null, st.none()), (100 - null, hostile))


# Text without NUL (Postgres text cannot hold it) or lone surrogates.
any_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60)

ODD_TEXT = [
    "", " ", "'", '"', "\\", "\\'", "''", "'; DROP TABLE queue.jobs; --", '"); SELECT 1; --',
    "%s", "%%", "$1", "{}", "NULL", "null", "\t\n\r\x01\x07\x1b\x1f\x7f", "🎉🚀👩‍👩‍👧", "ä", "e\u0301",
    "\u202eevil", "\ufeffbom", "\u00a0nbsp", "日本語のキュー", "x" * 58, "y" * 200, "z" * 201,
]
odd_text = st.one_of(st.sampled_from(ODD_TEXT), any_text,
                     st.just(Big("1MB text", lambda: "\\'\"" * 350_000)))

INT_EDGES = [0, 1, -1, 2, 10_000, 10_001, 2**31 - 1, -2**31, 2**31, -2**31 - 1, 2**63 - 1, -2**63, 2**63]
int_edges = or_null(st.one_of(st.sampled_from(INT_EDGES), st.integers(-2**40, 2**40)))

# Intervals that Postgres accepts but that no timestamp survives being added
# to (the timestamp range ends in 294276), and other edges.
HUGE_INTERVALS = ["400000 years", "178000000 years", "178956970 years", "2147483647 days",
                  "2147483647 months", "2147483647 hours", "2562047788 hours", "9223372036854775807 microseconds",
                  "300000 years", "1000000 years 1 second"]
INTERVAL_EDGES = [
    "-400000 years", "-178000000 years", "178956971 years", "290000 years", "10000 years",
    "-2147483648 days", "-2147483648 months", "-1 second", "-1 microsecond", "0", "1 microsecond",
    "1 mon -30 days", "-1 mon +31 days", "1 year -366 days", "@ 3 days ago", "P1Y2M3DT4H5M6S",
    "PT-1S", "infinity", "-infinity", "", "soon", "1 fortnight", "1e400 seconds",
]
# The largest amount of each unit that still makes a valid interval.
UNIT_LIMITS = {"microseconds": 2**63 - 1, "milliseconds": 9 * 10**15, "seconds": 9 * 10**12,
               "minutes": 15 * 10**10, "hours": 2_562_047_788, "days": 2**31 - 1, "weeks": 306_783_378,
               "months": 2**31 - 1, "years": 178_956_970, "centuries": 1_789_569, "millennia": 178_956}


def _amount(unit, scale, sign, beyond):
    """`sign` x the unit's limit divided by 10**scale, or ten times over it."""
    n = UNIT_LIMITS[unit] * 10 if beyond else max(UNIT_LIMITS[unit] // 10**scale, 1)
    return f"{sign * n} {unit}"


hostile_interval = or_null(st.one_of(
    st.sampled_from(HUGE_INTERVALS),
    st.sampled_from(INTERVAL_EDGES),
    st.builds(_amount, st.sampled_from(sorted(UNIT_LIMITS)), st.integers(0, 8), st.sampled_from([1, 1, -1]),
              st.sampled_from([False] * 9 + [True])),
))

TIMESTAMP_EDGES = [
    "infinity", "-infinity", "infinity", "-infinity", "294276-12-31 23:59:59.999999+00",
    "294276-12-31 23:59:59+00", "294277-01-01 00:00:00+00", "4714-11-24 00:00:00+00 BC",
    "4713-01-01 00:00:00+00 BC", "epoch", "0001-01-01 00:00:00+00", "9999-12-31 23:59:59+14",
    "2000-02-30 00:00:00+00", "now", "today", "tomorrow", "yesterday", "allballs", "",
    "5874897-12-31", "200000-06-15 12:00+00",
]
hostile_timestamp = or_null(st.one_of(
    st.sampled_from(["infinity", "-infinity"]),
    st.sampled_from(TIMESTAMP_EDGES),
    st.integers(10_000, 294_276).map(lambda y: f"{y}-06-15 00:00:00+00"),
    st.datetimes(timezones=st.just(timezone.utc)).map(datetime.isoformat),
    st.integers(-10**9, 10**9).map(Rel),
))


def _json_leaf_text():
    return st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _json_leaf_text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_json_leaf_text(), children, max_size=4),
    max_leaves=12,
)
sane_json = st.one_of(st.just("{}"), json_values.map(lambda v: json.dumps(v, ensure_ascii=False)))
HOSTILE_JSON = [
    "{", "", " ", "nul", "NaN", "Infinity", '"\\u0000"', '{"a": "\\ud800"}', '"\\udc00\\ud800"',
    "1e1000000", "1e-1000000", "-0", "123456789012345678901234567890e300", "null", "[]",
    '"a string"', "true", '{"a": 1, "a": 2}', '{"\\"\'\\\\": "\'; DROP TABLE queue.jobs; --"}',
    '{"emoji": "🎉", "rtl": "\u202e", "ctl": "\\u0001\\u001f"}',
]
BIG_JSON = [
    Big("10k-deep array", lambda: "[" * 10_000 + "]" * 10_000),
    Big("5k-deep object", lambda: '{"a":' * 5_000 + "1" + "}" * 5_000),
    Big("2MB string", lambda: json.dumps({"s": "x" * 2_000_000})),
    Big("1MB of escapes", lambda: json.dumps({"s": "\n\"\\'\t🎉" * 170_000})),
    Big("100k-element array", lambda: json.dumps(list(range(100_000)))),
    Big("20k-key object", lambda: json.dumps({f"k{i}": i for i in range(20_000)})),
]
hostile_json = or_null(st.one_of(st.sampled_from(HOSTILE_JSON), st.sampled_from(BIG_JSON)), null=10)
JSON = V(sane_json, hostile_json)
OPT_JSON = V(optional(sane_json), hostile_json)


class Sized:
    """A name in this example's namespace exactly n characters long."""

    def __init__(self, n):
        self.n = n

    def resolve(self, machine):
        return machine.prefix + "l" * (self.n - len(machine.prefix))

    def __repr__(self):
        return f"Sized({self.n})"


# Names. The sane ones are own names (a prefix makes them unique to the
# example). An unprefixed name is always invalid, so nothing outside the
# example's namespace is ever created.
OWN_QUEUES = [Own("a"), Own("b"), Sized(57)]
BAD_QUEUE_NAMES = ["", " ", "'", '"', "\\", "a b", "q;", "x" * 58, "ä", "🎉", "\tq", "q\n",
                   "'; DROP TABLE queue.jobs; --", 'queue"name', "queue_\u00e9", Sized(58), Sized(1000)]
QUEUE = V(st.sampled_from(OWN_QUEUES),
          or_null(st.one_of(st.sampled_from(BAD_QUEUE_NAMES),
                            odd_text.map(lambda t: Own(t) if isinstance(t, str) else t))))
QUEUE_FILTER = V(weighted((15, st.just(OMIT)), (5, st.none()), (80, QUEUE.sane)), QUEUE.hostile)
own_text = any_text.map(Own)
GROUP = V(optional(st.sampled_from([Own("g1"), Own("g2")]), omitted=55),
          or_null(st.one_of(st.just(""), st.just("x" * 201), own_text, st.just(Own("g" * 200)))))
WORKER = V(optional(st.sampled_from([Own("w1"), Own("w2")]), omitted=40),
           or_null(st.one_of(st.just(""), st.just("w" * 201), own_text)))
HEARTBEAT_WORKER = V(st.sampled_from([Own("w1"), Own("w2")]), WORKER.hostile)
SCHEDULE_NAME = V(st.sampled_from([Own("s1"), Own("s2")]),
                  or_null(st.one_of(st.just(""), st.just("s" * 201), own_text)))

PRIORITY_NAMES = ["critical", "high", "normal", "low", "HIGH", " Low ", "7", "-7", "+3",
                  "999999999", "-999999999"]
HOSTILE_PRIORITY_NAMES = ["", " ", "urgent", "1.5", "1e3", "1000000000", "2147483648",
                          "-2147483649", "٣", "５", "high\n", "'high'"]
PRIORITY_TEXT = V(st.sampled_from(PRIORITY_NAMES),
                  or_null(st.one_of(st.sampled_from(HOSTILE_PRIORITY_NAMES), any_text)))
PRIORITY_INT = V(optional(st.sampled_from([-20, -10, 0, 5, 10])), int_edges)

SANE_DELAYS = ["0", "50 milliseconds", "300 milliseconds", "1 second", "1 hour"]
DELAY = V(optional(st.sampled_from(SANE_DELAYS), omitted=75), hostile_interval, weight=3)
RUN_AT = V(optional(st.sampled_from([Rel(-3600), Rel(-0.01), Rel(0.2), Rel(1), Rel(3600)]), omitted=75),
           hostile_timestamp, weight=3)
MAX_ATTEMPTS = V(optional(st.sampled_from([1, 2, 3, 5])), int_edges)
TIMEOUT = V(optional(st.sampled_from(["50 milliseconds", "300 milliseconds", "2 seconds", "5 minutes"])),
            hostile_interval, weight=3)
BACKOFF_BASE = V(optional(st.sampled_from(["0", "10 milliseconds", "1 second"])), hostile_interval, weight=2)
BACKOFF_MAX = V(optional(st.sampled_from(["1 second", "1 hour"])), hostile_interval, weight=2)
RETRY_DELAYS = V(
    optional(st.sampled_from([["0"], ["10 milliseconds", "1 second"], ["1 minute", "5 minutes", "30 minutes"]])),
    or_null(st.one_of(st.just([]), st.lists(st.sampled_from(HUGE_INTERVALS), min_size=1, max_size=3),
                      st.lists(st.one_of(st.none(), hostile_interval, st.sampled_from(SANE_DELAYS)),
                               min_size=1, max_size=4))),
    weight=3)
DEDUPE_KEY = V(optional(st.sampled_from(["k1", "k2"]), omitted=75), or_null(odd_text))
PUSH_OPTIONS = [
    ("delay", "interval", DELAY), ("run_at", "timestamptz", RUN_AT),
    ("serial_group", "text", GROUP), ("max_attempts", "int", MAX_ATTEMPTS),
    ("timeout", "interval", TIMEOUT), ("backoff_base", "interval", BACKOFF_BASE),
    ("backoff_max", "interval", BACKOFF_MAX), ("retry_delays", "interval[]", RETRY_DELAYS),
    ("dedupe_key", "text", DEDUPE_KEY),
]
PAYLOADS = V(st.lists(sane_json, min_size=1, max_size=8),
             or_null(st.one_of(st.just([]), st.lists(st.one_of(sane_json, hostile_json), min_size=1, max_size=4),
                               st.just(Big("2000 payloads", lambda: ["{}"] * 2000)))))

ID_EDGES = [0, -1, 2**31, 2**63 - 1, -2**63, 2**63]
hostile_id = or_null(st.one_of(st.just(Unknown()), st.sampled_from(ID_EDGES)), null=20)
JOB_ID = V(st.one_of(st.integers(0, 1000).map(JobRef), st.integers(0, 1000).map(ClaimRef)), hostile_id)
# Half the time the latest claim: a worker finishes what it just got.
claim_ref = st.one_of(st.just(ClaimRef(-1)), st.integers(0, 1000).map(ClaimRef))
CLAIM_ID = V(claim_ref, st.one_of(st.integers(0, 1000).map(JobRef), hostile_id))
JOB_IDS = V(st.lists(claim_ref, max_size=6),
            or_null(st.lists(st.one_of(JOB_ID.sane, hostile_id), max_size=6)))
ATTEMPT = V(weighted((50, st.just(OMIT)), (50, st.just(CLAIMED))), int_edges)
INTERVAL = V(st.sampled_from(["0", "1 second", "1 minute", "5 minutes", "1 hour", "1 day"]), hostile_interval)
OPT_INTERVAL = V(optional(INTERVAL.sane), hostile_interval)
COUNT = V(optional(st.sampled_from([1, 2, 5, 10, 100])), int_edges)
BOOLEAN = V(optional(st.booleans()), st.none())
TEXT = V(optional(st.sampled_from(["boom", "SMTP 421", "half way"]), omitted=30), or_null(odd_text))

SCHEDULES = ["every 1 second", "every 2 seconds", "manual", "*/5 * * * *", "@hourly", "@yearly",
             "0 9 * * mon-fri", "0 0 1 jan,jul *"]
HOSTILE_SCHEDULES = [
    "every 0 seconds", "every -1 seconds", "every 400000 years", "every 178000000 years",
    "every 1 microsecond", "at infinity", "at -infinity", "at 294276-12-31 23:59:59+00",
    "at 294277-01-01", "at 2000-01-01 00:00+00", "at 4714-11-24 00:00:00+00 BC", "at now",
    "* * 31 2 *", "0 0 30 2 *", "0 0 29 2 1", "61 * * * *", "* * * * * *", "*/0 * * * *",
    "0-59/1000000000 * * * *", "@reboot", "@", "", " ", "every", "every 1", "every day",
    "every 2147483647 days", "0 0 31 4,6,9,11 *",
]
SCHEDULE = V(st.sampled_from(SCHEDULES), or_null(st.one_of(st.sampled_from(HOSTILE_SCHEDULES), any_text)),
             weight=3)


# ---------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------

class Call:
    """One call of a public function: its name, how to select from it, and
    its arguments as (name, SQL type, value, positional). Omitted arguments
    are left out; the others become `%s::type` (or `name => %s::type`)
    placeholders, so every value is a bound parameter."""

    def __init__(self, fname, shape, args):
        self.fname = fname
        self.shape = shape
        self.args = args

    def sql(self):
        """The statement, with one placeholder per passed argument."""
        parts = [f"%s::{sqltype}" if positional else f"{name} => %s::{sqltype}"
                 for name, sqltype, value, positional in self.args if value is not OMIT]
        return self.shape.format(call=f"{self.fname}({', '.join(parts)})")

    def params(self, machine):
        """The bound values, resolved against the machine."""
        machine.current_attempt = 1
        return [resolve(value, machine) for _, _, value, _ in self.args if value is not OMIT]

    def arg(self, name):
        """The (symbolic) value of the argument called `name`, or OMIT."""
        for n, _, value, _ in self.args:
            if n == name:
                return value
        return OMIT

    def __repr__(self):
        shown = [short(v, 60) if positional else f"{n}={short(v, 60)}"
                 for n, _, v, positional in self.args if v is not OMIT]
        return f"{self.fname}({', '.join(shown)})"


HOSTILE_COUNT = weighted((35, st.just(0)), (50, st.just(1)), (15, st.just(2)))


def call(fname, shape, *specs):
    """A strategy of Calls of `fname`. Each spec is (name, sqltype, V); a
    name starting with '$' is passed positionally (the '$' is dropped). Up
    to two arguments, picked by their weight, come from their hostile side.
    (A composite rather than a map, so that steps print as Call's repr.)"""
    pick = weighted(*[(v.weight, st.just(i)) for i, (_, _, v) in enumerate(specs)]) if specs else None

    @st.composite
    def calls(draw):
        hostile = {draw(pick) for _ in range(draw(HOSTILE_COUNT))} if specs else set()
        return Call(fname, shape, [
            (n.lstrip("$"), t, draw(v.hostile if i in hostile else v.sane), n.startswith("$"))
            for i, (n, t, v) in enumerate(specs)])
    return calls()


SCALAR = "SELECT {call}"
push_calls = st.one_of(
    call("queue_push", SCALAR, ("$queue", "text", QUEUE), ("payload", "jsonb", JSON),
         ("priority", "int", PRIORITY_INT), *PUSH_OPTIONS),
    call("queue_push", SCALAR, ("$queue", "text", QUEUE), ("payload", "jsonb", JSON),
         ("priority", "text", PRIORITY_TEXT), *PUSH_OPTIONS),
)
push_batch_calls = st.one_of(
    call("queue_push_batch", "SELECT id FROM {call} AS id", ("$queue", "text", QUEUE),
         ("$payloads", "jsonb[]", PAYLOADS), ("priority", "int", PRIORITY_INT), *PUSH_OPTIONS),
    call("queue_push_batch", "SELECT id FROM {call} AS id", ("$queue", "text", QUEUE),
         ("$payloads", "jsonb[]", PAYLOADS), ("priority", "text", PRIORITY_TEXT), *PUSH_OPTIONS),
)
pop_calls = call("queue_pop", "SELECT id, attempt FROM {call}", ("$queue", "text", QUEUE),
                 ("worker", "text", WORKER), ("batch", "int", V(optional(st.sampled_from([2, 3, 10])), int_edges)),
                 # Short waits only: a legal wait of a year would stall the test (limits.sql has the edges).
                 ("wait", "interval", V(optional(st.sampled_from(["0", "1 millisecond", "20 milliseconds"])), st.none())))
finish_calls = st.one_of(
    call("queue_ack", SCALAR, ("$id", "bigint", CLAIM_ID), ("result", "jsonb", OPT_JSON),
         ("attempt", "int", ATTEMPT)),
    call("queue_ack", SCALAR, ("$ids", "bigint[]", JOB_IDS)),
    call("queue_fail", SCALAR, ("$id", "bigint", CLAIM_ID), ("error", "text", TEXT), ("attempt", "int", ATTEMPT),
         ("retry_in", "interval", V(optional(st.sampled_from(["0", "10 milliseconds", "1 second"])),
                                    hostile_interval, weight=3)),
         ("permanent", "boolean", BOOLEAN)),
    call("queue_touch", SCALAR, ("$id", "bigint", CLAIM_ID),
         ("extend", "interval", V(optional(st.sampled_from(["1 second", "10 minutes"])), hostile_interval, 3)),
         ("attempt", "int", ATTEMPT)),
    call("queue_release", SCALAR, ("$id", "bigint", CLAIM_ID), ("attempt", "int", ATTEMPT)),
    call("queue_cancel", SCALAR, ("$id", "bigint", JOB_ID)),
    call("queue_progress", SCALAR, ("$id", "bigint", CLAIM_ID),
         ("$current", "int", V(st.integers(0, 10), int_edges)),
         ("$total", "int", V(st.integers(10, 20), int_edges)), ("message", "text", TEXT)),
)
look_calls = st.one_of(
    call("queue_peek", "SELECT id, length(payload::text) FROM {call}", ("$queue", "text", QUEUE),
         ("n", "int", COUNT)),
    call("queue_job", "SELECT length(({call})::text)", ("$id", "bigint", JOB_ID)),
    call("queue_stats", SCALAR, ("queue", "text", QUEUE_FILTER)),
    call("queue_metrics", SCALAR, ("queue", "text", QUEUE_FILTER), ("since", "interval", OPT_INTERVAL)),
    call("queue_list", "SELECT count(*) FROM {call}"),
    call("queue_size", SCALAR, ("$queue", "text", QUEUE)),
    call("queue_health", SCALAR),
    call("queue_prometheus", "SELECT length({call})"),
    call("queue_priority", SCALAR, ("$name", "text", PRIORITY_TEXT)),
    call("queue_dead", "SELECT id FROM {call}", ("queue", "text", QUEUE_FILTER), ("max_rows", "int", COUNT)),
    call("queue_workers", "SELECT count(*) FROM {call}", ("stale_after", "interval", OPT_INTERVAL)),
    call("queue_schedules", "SELECT count(*) FROM {call}"),
    call("queue_timeline", "SELECT count(*) FROM {call}", ("horizon", "interval", OPT_INTERVAL),
         ("max_rows", "int", COUNT)),
)
operate_calls = st.one_of(
    call("queue_retry", SCALAR, ("$id", "bigint", JOB_ID)),
    call("queue_retry_all", SCALAR, ("$queue", "text", QUEUE)),
    call("queue_heartbeat", "SELECT {call} IS NULL", ("$worker", "text", HEARTBEAT_WORKER),
         ("info", "jsonb", OPT_JSON)),
    call("queue_reap_workers", SCALAR, ("stale_after", "interval", OPT_INTERVAL)),
)
delete_calls = st.one_of(
    call("queue_delete", SCALAR, ("$id", "bigint", JOB_ID)),
    call("queue_purge_dead", SCALAR, ("queue", "text", QUEUE_FILTER), ("older_than", "interval", OPT_INTERVAL)),
    call("queue_cleanup", SCALAR, ("$older_than", "interval", INTERVAL)),
    call("queue_clear", SCALAR, ("$queue", "text", QUEUE)),
)
schedule_calls = st.one_of(
    call("queue_schedule", SCALAR, ("$name", "text", SCHEDULE_NAME), ("$schedule", "text", SCHEDULE),
         ("$queue", "text", QUEUE), ("payload", "jsonb", OPT_JSON), ("priority", "int", PRIORITY_INT),
         ("serial_group", "text", GROUP), ("max_attempts", "int", MAX_ATTEMPTS), ("timeout", "interval", TIMEOUT),
         ("enabled", "boolean", BOOLEAN)),
    call("queue_unschedule", SCALAR, ("$name", "text", SCHEDULE_NAME)),
    call("queue_trigger", SCALAR, ("$name", "text", SCHEDULE_NAME)),
)

# Functions whose queue argument must be a valid name when the call
# succeeds, and those where NULL (or nothing) means every queue.
QUEUE_ARG = {"queue_push", "queue_push_batch", "queue_pop", "queue_peek", "queue_retry_all",
             "queue_clear", "queue_size", "queue_schedule", "queue_stats", "queue_metrics",
             "queue_dead", "queue_purge_dead"}
QUEUE_FILTERS = {"queue_stats", "queue_metrics", "queue_dead", "queue_purge_dead"}

# Which live jobs each deleting function may remove, given the job's queue
# and status just before the call ("lapsed": processing with its lease run
# out, which the maintenance pass may have moved on meanwhile).
WAITING = {"pending", "scheduled", "retrying"}
FINAL = {"completed", "failed", "expired", "cancelled"}


def may_delete(c, machine, queue, status, lapsed):
    """Whether `c` (a deleting call that succeeded) may have removed a job
    that was in `queue` with `status` just before it."""
    moved_on = status == "processing" and lapsed
    target = c.arg("queue")
    target = None if target is OMIT else resolve(target, machine)
    if c.fname == "queue_delete":
        return status != "processing" or moved_on
    if c.fname == "queue_clear":
        return queue == target and (status in WAITING or moved_on)
    if c.fname == "queue_purge_dead":
        return (target is None or queue == target) and (status in {"failed", "expired"} or moved_on)
    if c.fname == "queue_cleanup":
        return status in FINAL or moved_on
    return False


# ---------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------

class ApiMachine(RuleBasedStateMachine):
    """Random call sequences against one example's namespace, with the
    invariants checked after every step."""

    def __init__(self):
        super().__init__()
        TALLY.examples += 1
        self.prefix = f"{RUN_PREFIX}{TALLY.examples:04d}-"  # fixed length: replays see the same names
        self.own_queues = [resolve(q, self) for q in OWN_QUEUES]
        self.conn = connect()
        self.conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        self.checker = connect()
        self.checker.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        self.keep_completed = self.checker.execute(
            "SELECT coalesce(nullif(current_setting('queue.keep_completed', true), ''), 'on')::boolean").fetchone()[0]
        self.live_ids = set()      # ids we got back and did not delete
        self.known_ids = []        # every id we got back, deleted ones too
        self.claims = []           # (id, attempt) from queue_pop
        self.current_attempt = 1
        self.last_call = "(start)"
        self._foreign_jobs()

    def _foreign_jobs(self):
        """Jobs of another queue, in each state, for calls with foreign ids:
        pending, processing (its claim is a ClaimRef too), completed and failed."""
        q = self.prefix + "foreign"
        ids = [self.conn.execute("SELECT queue_push(%s::text, %s::jsonb)", (q, json.dumps({"n": n}))).fetchone()[0]
               for n in range(4)]
        claimed = self.conn.execute("SELECT id, attempt FROM queue_pop(%s::text, %s::text, 3)",
                                    (q, self.prefix + "foreign-worker")).fetchall()
        assert [c[0] for c in claimed] == ids[:3], claimed
        self.conn.execute("SELECT queue_ack(%s::bigint)", (ids[1],))
        self.conn.execute("SELECT queue_fail(%s::bigint, 'foreign', permanent => true)", (ids[2],))
        self.track(ids)
        if not self.keep_completed:
            self.live_ids.discard(ids[1])
        self.claims.append(tuple(claimed[0]))

    def track(self, ids):
        """Remember ids the API gave back."""
        for job in ids:
            if job is not None and job not in self.live_ids:
                self.live_ids.add(job)
                self.known_ids.append(job)

    # -- running calls -----------------------------------------------------

    def run(self, c):
        """Run one call. Returns its rows, or None when it was refused with an
        acceptable error (recorded). Fails the test on a forbidden error."""
        self.last_call = c
        TALLY.calls += 1
        params = c.params(self)
        try:
            rows = self.conn.execute(c.sql(), params).fetchall()
        except psycopg.Error as e:
            sqlstate = e.diag.sqlstate
            message = (e.diag.message_primary or str(e)).strip()
            TALLY.reject(c.fname, sqlstate, message)
            if self.conn.closed or self.conn.broken:
                fail(f"{c!r}: the server connection was lost ({sqlstate}): {message}")
            if sqlstate is None or sqlstate.startswith(FORBIDDEN_CLASSES):
                fail(f"{c!r} raised SQLSTATE {sqlstate}: {message}")
            return None
        self.check_queue_name_refused(c)
        return rows

    def check_queue_name_refused(self, c):
        """A call that succeeded was given a valid queue name, or NULL (or
        nothing) where that means every queue."""
        if c.fname not in QUEUE_ARG or c.arg("queue") is OMIT:
            return
        name = resolve(c.arg("queue"), self)
        if name is None and c.fname in QUEUE_FILTERS:
            return
        expect(name is not None and QUEUE_NAME.fullmatch(name),
               f"{c!r} succeeded with the invalid queue name {short(name)}")

    # -- rules ---------------------------------------------------------------

    @rule(c=push_calls)
    def push(self, c):
        rows = self.run(c)
        if rows is not None:
            self.track([r[0] for r in rows])

    @rule(c=push_batch_calls)
    def push_batch(self, c):
        rows = self.run(c)
        if rows is not None:
            self.track([r[0] for r in rows])

    @rule(c=pop_calls)
    def pop(self, c):
        rows = self.run(c)
        if rows:
            self.claims.extend(tuple(r) for r in rows)

    @rule(c=finish_calls)
    def finish(self, c):
        rows = self.run(c)
        if rows is not None and c.fname == "queue_ack" and not self.keep_completed:
            # With queue.keep_completed = off an ack deletes the job.
            gone = self.checker.execute(
                "SELECT array(SELECT i FROM unnest(%s::bigint[]) i"
                " WHERE NOT EXISTS (SELECT 1 FROM queue.all_jobs j WHERE j.id = i))",
                (sorted(self.live_ids),)).fetchone()[0]
            self.live_ids.difference_update(gone)

    @rule(c=look_calls)
    def look(self, c):
        self.run(c)

    @rule(c=operate_calls)
    def operate(self, c):
        self.run(c)

    @rule(c=schedule_calls)
    def schedule(self, c):
        rows = self.run(c)
        if rows is not None and c.fname == "queue_trigger":
            self.track([rows[0][0]])

    @rule(c=delete_calls)
    def delete(self, c):
        """A deleting call: the tracked jobs it removed must be ones it may
        delete, and a refused call removes nothing."""
        before = {r[0]: r[1:] for r in self.checker.execute(
            "SELECT id, queue::text, status::text, lease_until < now() FROM queue.all_jobs WHERE id = ANY(%s::bigint[])",
            (sorted(self.live_ids),)).fetchall()}
        rows = self.run(c)
        after = {r[0] for r in self.checker.execute(
            "SELECT id FROM queue.all_jobs WHERE id = ANY(%s::bigint[])", (sorted(self.live_ids),)).fetchall()}
        removed = set(before) - after
        if rows is None:
            expect(not removed, f"{c!r} failed but deleted jobs {sorted(removed)}")
            return
        wrong = {i: before[i] for i in removed if not may_delete(c, self, *before[i])}
        expect(not wrong, f"{c!r} deleted jobs it must not delete: {wrong}")
        if c.fname == "queue_delete":
            target = resolve(c.arg("id"), self)
            expect(removed <= {target}, f"{c!r} deleted {sorted(removed)}")
            if target in before and rows[0][0]:
                expect(removed == {target}, f"{c!r} returned true but the job is still there")
        self.live_ids -= removed

    @rule(sleep_ms=st.sampled_from([0, 0, 30, 150]))
    def tick(self, sleep_ms):
        """Let time pass (leases of tens of milliseconds run out), then tick."""
        time.sleep(sleep_ms / 1000)
        self.run(Call("queue_tick", SCALAR, []))

    # -- invariants -----------------------------------------------------------

    def used_queues(self):
        """Every valid queue of this example: ours and any that a random but
        valid name created."""
        found = self.checker.execute(
            "SELECT DISTINCT queue::text FROM queue.all_jobs WHERE starts_with(queue, %s::text)"
            " UNION SELECT queue FROM queue_list() WHERE starts_with(queue, %s::text)",
            (self.prefix, self.prefix)).fetchall()
        return sorted(set(self.own_queues) | {r[0] for r in found})

    def must(self, sql, args, rollback):
        """Run a check statement (in a rolled-back transaction if asked);
        None when it succeeded, else its SQLSTATE and message."""
        try:
            if rollback:
                with self.checker.transaction(force_rollback=True):
                    self.checker.execute(sql, args).fetchall()
            else:
                self.checker.execute(sql, args).fetchall()
            return None
        except psycopg.Error as e:
            error = f"SQLSTATE {e.diag.sqlstate}: {(e.diag.message_primary or str(e)).strip()}"
            if self.checker.closed or self.checker.broken:
                fail(f"after {self.last_call!r}: connection lost in {sql}: {error}")
            return error

    def worker_can_finish_everything(self, queues, worker):
        """In a transaction that is rolled back: claim every claimable job of
        the example's queues, then ack them all and read queue_metrics, and
        (instead) fail them all. Whatever a push accepted, a worker can
        finish the job it got. Returns what failed."""
        errors = []
        with self.checker.transaction(force_rollback=True):
            ids = [r[0] for r in self.checker.execute(
                "SELECT p.id FROM unnest(%s::text[]) q, queue_pop(q, %s::text, 10000) p", (queues, worker))]
            for what, sqls in (
                ("queue_ack(ids), then queue_metrics(q) and queue_metrics()",
                 ["SELECT queue_ack(%(ids)s::bigint[])",
                  "SELECT queue_metrics(q) FROM unnest(%(queues)s::text[]) q", "SELECT queue_metrics()"]),
                ("queue_fail(id) of each", ["SELECT count(queue_fail(i, 'probe')) FROM unnest(%(ids)s::bigint[]) i"]),
            ):
                try:
                    with self.checker.transaction(force_rollback=True):
                        for sql in sqls:
                            self.checker.execute(sql, {"ids": ids, "queues": queues}).fetchall()
                except psycopg.Error as e:
                    errors.append(f"with every job claimed, {what}: SQLSTATE {e.diag.sqlstate}: "
                                  f"{(e.diag.message_primary or str(e)).strip()}")
        return errors

    @invariant()
    def no_job_lost_or_duplicated(self):
        rows = self.checker.execute(
            "SELECT id, count(*) FROM queue.all_jobs WHERE id = ANY(%s::bigint[]) GROUP BY id",
            (sorted(self.live_ids),)).fetchall()
        twice = sorted(i for i, n in rows if n > 1)
        missing = sorted(self.live_ids - {i for i, _ in rows})
        expect(not twice, f"after {self.last_call!r}: jobs in both tables: {twice}")
        expect(not missing, f"after {self.last_call!r}: jobs lost: {missing}")

    @invariant()
    def serial_groups_hold(self):
        index = self.checker.execute(
            "SELECT i.indisunique AND i.indisvalid FROM pg_index i"
            " WHERE i.indexrelid = to_regclass('queue.jobs_group_active')").fetchone()
        expect(index == (True,), f"after {self.last_call!r}: jobs_group_active is missing or invalid: {index}")
        doubled = self.checker.execute(
            "SELECT serial_group, count(*) FROM queue.jobs WHERE status = 'processing'"
            " AND serial_group IS NOT NULL GROUP BY 1 HAVING count(*) > 1").fetchall()
        expect(not doubled, f"after {self.last_call!r}: serial groups with two jobs processing: {doubled}")

    @invariant()
    def readers_succeed_and_counters_match(self):
        queues = self.used_queues()
        failures = []
        worker = self.prefix + "checker"
        for name, sql, rollback in MUST_SUCCEED:
            error = self.must(sql, {"queues": queues, "worker": worker}, rollback)
            if error is None:
                continue
            if "queues" in sql:  # name the queues it fails on
                named = [f"{name} on {q!r}: {e}" for q in queues
                         if (e := self.must(sql, {"queues": [q], "worker": worker}, rollback))]
            else:  # name the functions that fail
                named = [f"{r}: {e}" for r in GLOBAL_READERS if (e := self.must(f"SELECT {r}", {}, False))]
            failures.extend(named or [f"{name}: {error}"])
        if not failures:
            tick = self.checker.execute("SELECT queue_tick()").fetchone()[0]
            if tick.get("errors"):
                failures.append(f"queue_tick() reports errors (see the server log): {tick}")
            failures += self.worker_can_finish_everything(queues, worker)
        expect(not failures, f"after {self.last_call!r}, calls that must succeed failed:\n  "
               + "\n  ".join(failures))

        try:
            wait_for(self.checker, COUNTERS_SQL, (queues,), [], timeout=COUNTER_TIMEOUT)
        except psycopg.Error as e:
            fail(f"after {self.last_call!r}: reading the counters failed: "
                 f"SQLSTATE {e.diag.sqlstate}: {e.diag.message_primary}")
        except AssertionError as e:
            fail(f"after {self.last_call!r}: counters disagree with the jobs: {e}")

    def teardown(self):
        """Remove the example's namespace. A failure here (the server is
        gone after a crash) is kept for the summary, not raised: it would
        hide the failure that caused it."""
        self.conn.close()
        self.checker.close()
        try:
            remove_namespace(self.prefix)
        except psycopg.Error as e:
            TALLY.failures.append(f"cleaning up {self.prefix}: {e}")


# What must succeed after any step, whatever came before: (what, SQL, per
# queue, in a rolled-back transaction). The per-queue ones take the array
# of the example's queues and a worker name, and run for all queues at once.
MUST_SUCCEED = [
    ("queue_tick()", "SELECT queue_tick()", False),
    ("queue_pop(q, worker, 10000)",
     "SELECT count(*) FROM unnest(%(queues)s::text[]) q, queue_pop(q, %(worker)s::text, 10000)", True),
    ("queue_metrics(q), queue_stats(q), queue_size(q)",
     "SELECT queue_metrics(q), queue_stats(q), queue_size(q) FROM unnest(%(queues)s::text[]) q", False),
    ("queue_peek(q, 100)",
     "SELECT count(length(p.payload::text)) FROM unnest(%(queues)s::text[]) q, queue_peek(q, 100) p", False),
    ("queue_dead(q, 100)", "SELECT count(*) FROM unnest(%(queues)s::text[]) q, queue_dead(q, 100)", False),
    ("queue_metrics(), queue_stats(), queue_health(), queue_prometheus(), queue_list(), queue_timeline(),"
     " queue_workers(), queue_schedules(), queue_dead()",
     "SELECT queue_metrics(), queue_stats(), queue_health(), length(queue_prometheus()),"
     " (SELECT count(*) FROM queue_list()), (SELECT count(*) FROM queue_timeline()),"
     " (SELECT count(*) FROM queue_workers()), (SELECT count(*) FROM queue_schedules()),"
     " (SELECT count(*) FROM queue_dead())", False),
]
# When the statement of the global readers fails: each of them alone.
GLOBAL_READERS = ["queue_metrics()", "queue_stats()", "queue_health()", "length(queue_prometheus())",
                  "count(*) FROM queue_list()", "count(*) FROM queue_timeline()", "count(*) FROM queue_workers()",
                  "count(*) FROM queue_schedules()", "count(*) FROM queue_dead()"]

# The gauges of queue_stats and queue_size against the jobs table: a list of
# the queues where they differ ([] when they all agree).
COUNTERS_SQL = """
WITH q AS (SELECT DISTINCT unnest(%s::text[]) AS queue),
counted AS (
    SELECT q.queue,
           jsonb_build_object(
               'pending', count(j.id) FILTER (WHERE j.status = 'pending'),
               'scheduled', count(j.id) FILTER (WHERE j.status = 'scheduled'),
               'processing', count(j.id) FILTER (WHERE j.status = 'processing'),
               'retrying', count(j.id) FILTER (WHERE j.status = 'retrying'),
               'size', count(j.id) FILTER (WHERE j.status IN ('pending', 'scheduled', 'retrying'))) AS jobs
      FROM q LEFT JOIN queue.jobs j ON j.queue = q.queue
     GROUP BY q.queue),
reported AS (
    SELECT c.queue, c.jobs,
           (SELECT jsonb_build_object('pending', s -> 'pending', 'scheduled', s -> 'scheduled',
                                      'processing', s -> 'processing', 'retrying', s -> 'retrying',
                                      'size', to_jsonb(queue_size(c.queue)))
              FROM queue_stats(c.queue) s) AS counters
      FROM counted c)
SELECT coalesce(jsonb_agg(jsonb_build_object('queue', queue, 'jobs', jobs, 'counters', counters))
                FILTER (WHERE jobs IS DISTINCT FROM counters), '[]')
  FROM reported
"""


def test_public_api_survives_hostile_calls(capsys):
    """Random and hostile call sequences never break the queue (see the
    module docstring for what is checked after every step)."""
    with connect() as conn:
        retention = conn.execute("SELECT extract(epoch FROM coalesce(nullif("
                                 "current_setting('queue.retention', true), ''), '7 days')::interval)").fetchone()[0]
    if retention < 3600:
        pytest.skip("queue.retention is under an hour: history would vanish under the test")
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    try:
        run_state_machine_as_test(ApiMachine, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
            phases=phases, print_blob=False,
            suppress_health_check=list(HealthCheck)))
    finally:
        with capsys.disabled():
            print("\n" + TALLY.summary(), flush=True)
            # A failure and Hypothesis' replay of it differ only in the namespace.
            for message in dict.fromkeys(re.sub(r"prop-\w{6}-\d{4}-", "<ns>", m) for m in TALLY.failures):
                print(f"  check failed: {short(message, 2000)}", flush=True)
            if os.environ.get("QUEUE_PROPERTY_VERBOSE") == "1":
                for (fname, sqlstate), message in sorted(TALLY.messages.items()):
                    print(f"  {fname} {sqlstate}: {short(message, 200)}")
        remove_namespace(RUN_PREFIX)
