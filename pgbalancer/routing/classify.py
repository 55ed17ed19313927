"""Statement classification: what a SQL text does, so routing knows where it may run.

``classify(sql)`` tokenizes the text the way PostgreSQL's lexer does (nested ``/* */``
comments, ``--`` comments, '' strings, E'' strings with backslash escapes, U&'' / B'' /
X'' / N'' strings, "quoted identifiers", $tag$ dollar quoting, positional parameters)
and then reads the token list, statement by statement, for what matters to routing:

* READ: SELECT, WITH … SELECT, VALUES, TABLE, SHOW, EXPLAIN (without ANALYZE of a
  write), DECLARE/COPY TO of a read, with no FOR UPDATE / NO KEY UPDATE / SHARE /
  KEY SHARE, no INTO, no data-modifying CTE, and no call of a function that may write;
* WRITE (DML, SELECT INTO, locking reads, COPY FROM), DDL, FUNCTION_CALL (CALL, DO, or a
  read calling a function the :class:`FunctionPolicy` says may write), TRANSACTION
  control, SESSION settings (SET/RESET/DISCARD), UTILITY (LISTEN, LOCK, VACUUM, SQL
  PREPARE/EXECUTE, …), EMPTY, and UNKNOWN for anything it cannot read.

Routing hints ride along: a ``/* pgbalancer: primary|standby|any */`` comment (also as a
``--`` comment, and Pgpool-II's ``/*NO LOAD BALANCE*/``), and ``SET pgbalancer.route``.

Guarantees, each tested:

* it never raises, whatever it is given (any str, any bytes: invalid UTF-8 is replaced);
* it runs in linear time: every token pattern is possessive (no backtracking), nested
  comments and dollar quotes are closed with forward searches, and the grammar walk is one
  pass over the tokens with O(1) work per token;
* whatever it cannot read (an unterminated literal or comment, unbalanced parentheses, an
  unknown command, a text over ``max_length``) is UNKNOWN, which routing sends to the
  primary — the one node where any statement is safe.

It must never guess towards "read": every doubt resolves to a kind that runs on the
primary. Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from pgbalancer.routing.complexity import NO_FEATURES, QueryFeatures, complexity_score

DEFAULT_MAX_LENGTH = 256 << 10  # longer texts are not scanned (about 0.2 s each): UNKNOWN, so primary
_CACHED_TEXT_MAX = 8192  # the syntax of shorter texts is memoised (ORMs repeat the same SQL)
_HINT_COMMENT_MAX = 256  # only short comments are read for a hint


class StatementKind(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    DDL = "ddl"
    FUNCTION_CALL = "function call"  # CALL, DO, or a read calling a function that may write
    TRANSACTION = "transaction control"
    SESSION = "session setting"  # SET, RESET, DISCARD
    UTILITY = "utility"
    EMPTY = "empty"
    UNKNOWN = "unknown"

    @property
    def is_read(self) -> bool:
        return self in (StatementKind.READ, StatementKind.EMPTY)


# A batch's kind is its most demanding statement's (first in this tuple wins).
_SEVERITY = (
    StatementKind.UNKNOWN,
    StatementKind.WRITE,
    StatementKind.DDL,
    StatementKind.FUNCTION_CALL,
    StatementKind.UTILITY,
    StatementKind.TRANSACTION,
    StatementKind.SESSION,
    StatementKind.READ,
    StatementKind.EMPTY,
)


class TransactionOp(enum.StrEnum):
    BEGIN = "begin"  # BEGIN, START TRANSACTION
    COMMIT = "commit"  # COMMIT, END
    ROLLBACK = "rollback"  # ROLLBACK, ABORT
    SAVEPOINT = "savepoint"
    RELEASE = "release"
    ROLLBACK_TO = "rollback to savepoint"
    SET_TRANSACTION = "set transaction"
    PREPARE = "prepare transaction"
    COMMIT_PREPARED = "commit prepared"
    ROLLBACK_PREPARED = "rollback prepared"


class RouteHint(enum.StrEnum):
    PRIMARY = "primary"
    STANDBY = "standby"
    ANY = "any"


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """One statement of a text, as routing sees it."""

    kind: StatementKind
    command: str  # the leading keyword(s), upper case: "SELECT", "WITH", "SET", "START TRANSACTION"
    reason: str = ""  # why it is not a plain instance of its command (for logs and tests)
    transaction: TransactionOp | None = None
    read_only: bool | None = None  # READ ONLY / READ WRITE of BEGIN, SET TRANSACTION, session defaults
    isolation: str | None = None  # "serializable", "repeatable read", ... when stated
    chain: bool = False  # COMMIT/ROLLBACK AND CHAIN
    setting: str = ""  # SET/RESET: lower-case setting name ("pgbalancer.route", "all", "role", ...)
    value: str | None = None  # SET: the first value as written, unquoted; None for RESET
    local: bool = False  # SET LOCAL
    resets_all: bool = False  # RESET ALL, DISCARD ALL
    functions: tuple[str, ...] = ()  # functions called, lower case unless quoted; "schema.name" if qualified
    writing_functions: tuple[str, ...] = ()  # those the function policy says may write
    features: QueryFeatures = NO_FEATURES


@dataclass(frozen=True, slots=True)
class Classification:
    """What one Query (or one Parse, or a batch of them) does."""

    kind: StatementKind
    statements: tuple[StatementInfo, ...] = ()
    hint: RouteHint | None = None
    problem: str = ""  # why the text could not be read ('' if it could)
    reason: str = ""  # why the batch has its kind, for logs
    writing_functions: tuple[str, ...] = ()  # called functions the policy says may write
    features: QueryFeatures = NO_FEATURES
    complexity: int = 0

    @property
    def is_read(self) -> bool:
        return self.kind.is_read

    @property
    def only(self) -> StatementInfo | None:
        """The statement, when the text holds exactly one."""
        return self.statements[0] if len(self.statements) == 1 else None

    @property
    def transaction_ops(self) -> tuple[TransactionOp, ...]:
        return tuple(s.transaction for s in self.statements if s.transaction is not None)


def unknown(problem: str) -> Classification:
    """The classification of anything that cannot be read: it goes to the primary."""
    return Classification(StatementKind.UNKNOWN, problem=problem, reason=problem)


# --------------------------------------------------------------------------- function policy


def _names(text: str) -> frozenset[str]:
    """A set of names written as a whitespace-separated block."""
    return frozenset(text.split())


# Functions that must run on the primary whatever the lists say: they write, take
# cluster-wide locks, or only work (or only mean something) on the primary.
_ALWAYS_WRITE_NAMES = frozenset(
    {
        "nextval",
        "setval",
        "currval",  # only defined where nextval ran: the primary
        "lastval",
        "txid_current",
        "txid_current_if_assigned",
        "pg_current_xact_id",
        "pg_current_xact_id_if_assigned",
        "pg_current_wal_lsn",
        "pg_current_wal_insert_lsn",
        "pg_current_wal_flush_lsn",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_notify",
        "set_config",  # changes session state on one server only
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_import_system_collations",
        "dblink",
        "dblink_exec",
    }
)
_ALWAYS_WRITE_PREFIXES = (
    "pg_advisory_",
    "pg_try_advisory_",
    "lo_",
    "pg_stat_reset",
    "pg_create_",
    "pg_drop_",
    "pg_copy_",
    "pg_replication_",
    "pg_logical_",
    "pg_file_",
    "dblink_",
)

# Built-in functions that never write; names of user functions are judged by the lists.
_BUILTIN_READ_ONLY = _names(
    """
    count sum avg min max array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg
    bool_and bool_or every bit_and bit_or bit_xor stddev stddev_pop stddev_samp variance var_pop var_samp
    corr covar_pop covar_samp regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx
    regr_sxy regr_syy percentile_cont percentile_disc mode xmlagg range_agg range_intersect_agg any_value
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    grouping cube rollup
    lower upper length char_length character_length octet_length bit_length substr substring trim btrim
    ltrim rtrim concat concat_ws replace split_part left right lpad rpad repeat reverse position strpos
    initcap format md5 sha224 sha256 sha384 sha512 encode decode ascii chr translate starts_with
    quote_ident quote_literal quote_nullable to_char to_date to_number to_timestamp to_hex to_ascii
    regexp_match regexp_matches regexp_replace regexp_split_to_array regexp_split_to_table regexp_like
    regexp_count regexp_instr regexp_substr overlay normalize unistr string_to_array string_to_table
    array_to_string convert convert_from convert_to get_byte get_bit set_byte set_bit
    abs ceil ceiling floor round trunc sqrt cbrt power pow exp ln log log10 mod sign pi div degrees radians
    sin cos tan asin acos atan atan2 sinh cosh tanh width_bucket random gen_random_uuid factorial gcd lcm
    scale min_scale trim_scale greatest least coalesce nullif num_nonnulls num_nulls
    now clock_timestamp statement_timestamp transaction_timestamp timeofday current_date current_time
    current_timestamp localtime localtimestamp date_trunc date_part date_bin extract age make_date
    make_time make_timestamp make_timestamptz make_interval justify_days justify_hours justify_interval
    isfinite to_timestamp timezone
    json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb row_to_json
    array_to_json json_object jsonb_object json_array_length jsonb_array_length json_each jsonb_each
    json_each_text jsonb_each_text json_array_elements jsonb_array_elements json_array_elements_text
    jsonb_array_elements_text json_object_keys jsonb_object_keys json_typeof jsonb_typeof
    json_extract_path jsonb_extract_path json_extract_path_text jsonb_extract_path_text json_strip_nulls
    jsonb_strip_nulls jsonb_set jsonb_set_lax jsonb_insert jsonb_pretty json_populate_record
    jsonb_populate_record json_populate_recordset jsonb_populate_recordset json_to_record jsonb_to_record
    json_to_recordset jsonb_to_recordset jsonb_path_exists jsonb_path_match jsonb_path_query
    jsonb_path_query_array jsonb_path_query_first json_scalar json_serialize json_array json_query
    json_value json_exists json_table
    array_length array_upper array_lower array_dims array_ndims cardinality unnest array_append
    array_prepend array_cat array_position array_positions array_remove array_replace array_fill
    trim_array generate_series generate_subscripts
    to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd
    ts_headline setweight strip numnode querytree ts_rewrite tsvector_to_array array_to_tsvector
    isempty lower_inc upper_inc lower_inf upper_inf range_merge multirange
    version current_database current_catalog current_schema current_schemas current_user session_user
    user current_role current_setting inet_client_addr inet_client_port inet_server_addr
    inet_server_port pg_backend_pid pg_postmaster_start_time pg_conf_load_time pg_is_in_recovery
    pg_last_wal_receive_lsn pg_last_wal_replay_lsn pg_last_xact_replay_timestamp pg_is_wal_replay_paused
    pg_wal_lsn_diff pg_size_pretty pg_size_bytes pg_relation_size pg_total_relation_size pg_table_size
    pg_indexes_size pg_database_size pg_tablespace_size pg_column_size pg_typeof format_type
    obj_description col_description shobj_description pg_table_is_visible pg_type_is_visible
    pg_function_is_visible pg_my_temp_schema pg_jit_available pg_listening_channels pg_sleep
    pg_sleep_for pg_sleep_until pg_blocking_pids pg_safe_snapshot_blocking_pids pg_trigger_depth
    pg_column_compression pg_relation_filenode pg_relation_filepath pg_filenode_relation
    pg_visible_in_snapshot pg_snapshot_xmin pg_snapshot_xmax pg_current_snapshot txid_current_snapshot
    txid_snapshot_xmin txid_snapshot_xmax txid_visible_in_snapshot pg_xact_commit_timestamp
    to_regclass to_regtype to_regproc to_regprocedure to_regoper to_regoperator to_regnamespace
    to_regrole to_regcollation row_security_active pg_char_to_encoding pg_encoding_to_char
    pg_client_encoding pg_options_to_table pg_settings_get_flags pg_input_is_valid
    pg_input_error_info quote_all_identifiers pg_tablespace_location pg_partition_tree
    pg_partition_ancestors pg_partition_root pg_indexam_has_property pg_index_has_property
    pg_index_column_has_property
    host hostmask masklen netmask network broadcast abbrev family inet_same_family inet_merge set_masklen
    area center diameter height width radius npoints isclosed isopen point box circle line lseg path
    polygon
    xmlelement xmlforest xmlconcat xmlparse xmlserialize xmlroot xmlpi xmlcomment xmlexists
    xml_is_well_formed xpath xpath_exists xmltable
    bool boolean int int2 int4 int8 integer smallint bigint float float4 float8 real double numeric
    decimal text varchar char character bpchar date time timetz timestamp timestamptz interval bit
    varbit bytea uuid json jsonb inet cidr macaddr money oid regclass regtype name
    bernoulli system
    """
)
_BUILTIN_READ_ONLY_PREFIXES = ("pg_get_", "pg_stat_get_", "has_", "pg_has_")


class FunctionPolicy:
    """Which called functions may write (Pgpool-II's rule): a function not known to be read-only
    counts as a write, since it may write.

    Order of judgement, first match wins: built-in writers (nextval, setval, pg_advisory_*,
    lo_*, …) always write; ``write_function_list`` writes; ``read_only_function_list`` and
    the built-in read-only functions read; anything else writes — unless only
    ``write_function_list`` is set, which (as in Pgpool-II) means "only these write".
    List entries are regular expressions matched against the whole name, case-insensitively,
    both bare and schema-qualified.
    """

    __slots__ = ("_judged", "_only_listed_write", "_read_only", "_write")

    def __init__(self, read_only_patterns: Iterable[str] = (), write_patterns: Iterable[str] = ()) -> None:
        self._read_only = _compile_patterns(read_only_patterns)
        self._write = _compile_patterns(write_patterns)
        self._only_listed_write = self._write is not None and self._read_only is None
        self._judged: dict[str, bool] = {}

    def may_write(self, name: str) -> bool:
        known = self._judged.get(name)
        if known is None:
            known = self._judge(name[:127])  # names are at most 63 bytes (twice, qualified)
            if len(self._judged) < 4096:
                self._judged[name] = known
        return known

    def _judge(self, name: str) -> bool:
        schema, _, bare = name.rpartition(".")
        bare_lower = bare.lower()
        if bare_lower in _ALWAYS_WRITE_NAMES or bare_lower.startswith(_ALWAYS_WRITE_PREFIXES):
            return True
        if _listed(self._write, name, bare):
            return True
        if _listed(self._read_only, name, bare):
            return False
        if schema.lower() in ("", "pg_catalog") and _is_builtin_read_only(bare):
            return False
        return not self._only_listed_write


def _compile_patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One alternation of the entries; an invalid expression is taken literally (config validates)."""
    parts = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        try:
            re.compile(pattern)
        except re.error:
            pattern = re.escape(pattern)
        parts.append(f"(?:{pattern})")
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _listed(patterns: re.Pattern[str] | None, name: str, bare: str) -> bool:
    return patterns is not None and (
        patterns.fullmatch(name) is not None or patterns.fullmatch(bare) is not None
    )


def _is_builtin_read_only(name: str) -> bool:
    return name in _BUILTIN_READ_ONLY or name.startswith(_BUILTIN_READ_ONLY_PREFIXES)


DEFAULT_POLICY = FunctionPolicy()


# --------------------------------------------------------------------------- lexer

# Token conventions in the token list (all str, so the grammar walk compares strings only):
#   keyword or identifier  -> lower-cased word (starts with a letter or '_')
#   "quoted identifier"    -> '"' + name
#   any string literal     -> "'" + its body as written
#   number                 -> the number's text (starts with a digit or '.')
#   $1                     -> "$"
#   punctuation            -> "(" ")" "," ";" "." "::" "[" "]" ":"
#   operator               -> its text
#   anything else          -> ""


def _token_pattern(backslash_quotes: bool) -> re.Pattern[str]:
    # Every repetition is possessive: a failed literal fails at once, with no backtracking.
    plain_body = r"(?:[^'\\]++|\\.|'')*+" if backslash_quotes else r"(?:[^']++|'')*+"
    return re.compile(
        rf"""
        \s*+
        (?:
            (?P<estr>[eE]'(?:[^'\\]++|\\.|'')*+')
          | (?P<eopen>[eE]')
          | (?P<str>(?:[uU]&|[bBxXnN])?'{plain_body}')
          | (?P<qid>(?:[uU]&)?"(?:[^"]++|"")*+")
          | (?P<word>[^\W\d][\w$]*+)
          | (?P<num>\d[\w.]*+|\.\d\w*+)
          | (?P<param>\$\d++)
          | (?P<dollar>\$(?:[^\W\d]\w*+)?\$)
          | (?P<cast>::)
          | (?P<punct>[(),;.\[\]:])
          | (?P<line>--[^\n]*+)
          | (?P<block>/\*)
          | (?P<op>(?:[+*<>=~!@\#%^&|`?]|-(?!-)|/(?!\*))++)
          | (?P<open>['"])
          | (?P<other>.)
        )
        """,
        re.VERBOSE | re.DOTALL,
    )


_TOKENS_STANDARD = _token_pattern(backslash_quotes=False)
_TOKENS_BACKSLASH = _token_pattern(backslash_quotes=True)
_COMMENT_MARK = re.compile(r"/\*|\*/")
_HINT = re.compile(r"\s*+pgbalancer\s*+:\s*+(primary|standby|any)\s*+", re.IGNORECASE)
_NO_LOAD_BALANCE = re.compile(r"\s*+no\s++load\s++balance\s*+", re.IGNORECASE)
_CACHE_HINT = re.compile(
    r"\s*+pgbalancer\s*+:\s*+(?:(nocache)|cache\s++ttl\s*+=\s*+(\d{1,9}))\s*+", re.IGNORECASE
)


@dataclass(slots=True)
class _Lexed:
    tokens: list[str] = field(default_factory=list)
    hints: list[RouteHint] = field(default_factory=list)
    cache_hints: list[str] = field(default_factory=list)  # "nocache", or "ttl=N" (the result cache's)
    problem: str = ""


def _lex(text: str, backslash_quotes: bool) -> _Lexed:
    match_at = (_TOKENS_BACKSLASH if backslash_quotes else _TOKENS_STANDARD).match
    lexed = _Lexed()
    append = lexed.tokens.append
    position = 0
    while (match := match_at(text, position)) is not None:
        position = match.end()
        kind = match.lastgroup
        if kind == "word":
            append(match.group(kind).lower())
        elif kind == "punct" or kind == "op" or kind == "cast" or kind == "num":
            append(match.group(kind))
        elif kind == "str" or kind == "estr":
            body = match.group(kind)
            append("'" + body[body.index("'") + 1 : -1])
        elif kind == "qid":
            body = match.group(kind)
            append('"' + body[body.index('"') + 1 : -1].replace('""', '"'))
        elif kind == "param":
            append("$")
        elif kind == "line":
            _note_hint(match.group(kind)[2:], lexed)
        elif kind == "block":
            position = _skip_block(text, match, lexed)
        elif kind == "dollar":
            position = _skip_dollar(text, match, lexed)
        elif kind == "eopen" or kind == "open":
            quote = match.group(kind)[-1]
            lexed.problem = "unterminated quoted " + ("identifier" if quote == '"' else "string")
        else:
            append("")
        if lexed.problem:
            break
    return lexed


def _skip_block(text: str, match: re.Match[str], lexed: _Lexed) -> int:
    """Skip a (nested) block comment; the position after it, or -1 if it never closes."""
    start = match.start("block")
    depth = 0
    for mark in _COMMENT_MARK.finditer(text, start):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            end = mark.end()
            if end - start <= _HINT_COMMENT_MAX:
                _note_hint(text[start + 2 : end - 2], lexed)
            return end
    lexed.problem = "unterminated /* comment"
    return -1


def _skip_dollar(text: str, match: re.Match[str], lexed: _Lexed) -> int:
    tag = match.group("dollar")
    close = text.find(tag, match.end())
    if close < 0:
        lexed.problem = f"unterminated dollar-quoted string {tag[:40]}"
        return -1
    lexed.tokens.append("'" + text[match.end() : close])
    return close + len(tag)


def _note_hint(comment: str, lexed: _Lexed) -> None:
    if len(comment) > _HINT_COMMENT_MAX:
        return
    if hint := _HINT.fullmatch(comment):
        lexed.hints.append(RouteHint(hint.group(1).lower()))
    elif _NO_LOAD_BALANCE.fullmatch(comment):
        lexed.hints.append(RouteHint.PRIMARY)
    elif cache := _CACHE_HINT.fullmatch(comment):
        lexed.cache_hints.append("nocache" if cache.group(1) else f"ttl={cache.group(2)}")


def _is_word(token: str) -> bool:
    return bool(token) and (token[0].isalpha() or token[0] == "_")


# --------------------------------------------------------------------------- statements


def _split(tokens: list[str]) -> tuple[list[tuple[int, int]], str]:
    """Statement ranges (start, end) split at top-level ';', and a problem if parentheses do not match.

    ``BEGIN ATOMIC … END`` bodies of CREATE FUNCTION/PROCEDURE hold ';' that do not end the
    statement; CASE … END nests inside them.
    """
    ranges: list[tuple[int, int]] = []
    depth = 0
    atomic = 0  # > 0 inside a BEGIN ATOMIC body
    start = 0
    previous = ""
    for index, token in enumerate(tokens):
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
            if depth < 0:
                return ranges, "unbalanced parentheses"
        elif token == ";" and depth == 0 and atomic == 0:
            if index > start:
                ranges.append((start, index))
            start = index + 1
        elif atomic:
            if token == "case":
                atomic += 1
            elif token == "end":
                atomic -= 1
        elif token == "atomic" and previous == "begin" and tokens[start : start + 1] == ["create"]:
            atomic = 1
        previous = token
    if depth != 0:
        return ranges, "unbalanced parentheses"
    if atomic:
        return ranges, "unterminated BEGIN ATOMIC body"
    if len(tokens) > start:
        ranges.append((start, len(tokens)))
    return ranges, ""


_DDL_COMMANDS = frozenset(
    {"create", "alter", "drop", "comment", "grant", "revoke", "security", "import", "refresh", "reindex"}
    | {"cluster", "reassign"}
)
_UTILITY_COMMANDS = frozenset(
    {"listen", "unlisten", "notify", "lock", "vacuum", "analyze", "analyse", "checkpoint", "load"}
    | {"fetch", "move", "close", "execute", "deallocate"}
)
_WRITE_COMMANDS = frozenset({"insert", "update", "delete", "merge", "truncate"})
_QUERY_STARTERS = frozenset({"select", "with", "values", "table"})


_EMPTY_STATEMENT = StatementInfo(StatementKind.EMPTY, "")


def _analyze(tokens: list[str], start: int, end: int, *, nested: bool = False) -> StatementInfo:
    """Classify the statement tokens[start:end]."""
    if start >= end:
        return _EMPTY_STATEMENT
    first = tokens[start]
    command = first.upper()
    if first in _QUERY_STARTERS or first == "(":
        return _query(tokens, start, end)
    if first == "show":
        return StatementInfo(StatementKind.READ, command)
    if first in _WRITE_COMMANDS:
        return StatementInfo(StatementKind.WRITE, command)
    if first in _DDL_COMMANDS:
        return StatementInfo(StatementKind.DDL, command)
    if first in _UTILITY_COMMANDS:
        return StatementInfo(StatementKind.UTILITY, command)
    if first in ("call", "do"):
        return StatementInfo(StatementKind.FUNCTION_CALL, command, reason=f"{command} runs server-side code")
    if first in ("begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"):
        return _transaction(tokens, start, end)
    if first in ("set", "reset", "discard"):
        return _session(tokens, start, end)
    if first == "prepare":
        if _at(tokens, start + 1, end) == "transaction":
            return StatementInfo(
                StatementKind.TRANSACTION, "PREPARE TRANSACTION", transaction=TransactionOp.PREPARE
            )
        return StatementInfo(
            StatementKind.UTILITY, command, reason="SQL PREPARE keeps a statement on one server"
        )
    if first == "explain" and not nested:
        return _explain(tokens, start, end)
    if first == "declare":
        return _declare(tokens, start, end)
    if first == "copy":
        return _copy(tokens, start, end)
    return StatementInfo(StatementKind.UNKNOWN, command, reason=f"unknown command {command[:40]!r}")


def _at(tokens: list[str], index: int, end: int) -> str:
    return tokens[index] if index < end else ""


# ---- queries


# Words that take a parenthesis without being a function call.
_NOT_CALLS = _names(
    """
    in exists any all some values using on over filter as from join where and or not select array row
    lateral with union intersect except when then else case by is like ilike similar between group
    partition order within table into returning set do window rows range groups recursive materialized
    limit offset for of having distinct cast sets conflict key unique check references primary include
    nulls escape collate zone at only return ordinality search cycle depth breadth operator varying
    """
)
# Words after which, inside a FROM clause, "name(" is a function call rather than "alias(columns)".
_CALL_CONTEXT = _names(
    """
    from join lateral on and or not tablesample only when then else case is in like ilike similar between
    select where by having returning distinct all any some exists with using limit offset values return
    set array escape zone at over
    """
)
_FROM_ENDERS = frozenset(
    {"where", "group", "having", "window", "order", "limit", "offset", "fetch", "union", "intersect"}
    | {"except", "for", "returning"}
)
_DML = frozenset({"insert", "update", "delete", "merge"})
_MAIN_STARTERS = frozenset({"select", "insert", "update", "delete", "merge", "values", "table"})
_AGGREGATES = _names(
    """
    count sum avg min max array_agg string_agg json_agg jsonb_agg json_object_agg jsonb_object_agg bool_and
    bool_or every bit_and bit_or bit_xor stddev stddev_pop stddev_samp variance var_pop var_samp corr
    covar_pop covar_samp percentile_cont percentile_disc mode xmlagg range_agg any_value
    """
)


@dataclass(slots=True)
class _Scan:
    """Mutable tallies of one pass over a query."""

    write_reason: str = ""
    unfinished_with: bool = False
    functions: list[str] = field(default_factory=list)
    joins: int = 0
    subqueries: int = 0
    aggregates: int = 0
    group_by: bool = False
    windows: int = 0
    order_bys: int = 0
    distinct: bool = False
    set_operations: int = 0
    ctes: int = 0
    recursive: bool = False
    has_from: bool = False
    has_where: bool = False
    has_limit: bool = False

    def features(self) -> QueryFeatures:
        return QueryFeatures(
            joins=self.joins,
            subqueries=self.subqueries,
            aggregates=self.aggregates,
            group_by=self.group_by,
            windows=self.windows,
            order_bys=self.order_bys,
            distinct=self.distinct,
            set_operations=self.set_operations,
            ctes=self.ctes,
            recursive=self.recursive,
            has_from=self.has_from,
            has_where=self.has_where,
            has_limit=self.has_limit,
        )


def _query(tokens: list[str], start: int, end: int) -> StatementInfo:
    """SELECT / WITH / VALUES / TABLE (possibly parenthesised): a read unless something in it writes."""
    first = tokens[start]
    command = first.upper() if first != "(" else "SELECT"
    scan = _scan_query(tokens, start, end)
    if scan.unfinished_with:
        return StatementInfo(StatementKind.UNKNOWN, command, reason="WITH without a main statement")
    if first == "table":
        scan.has_from = True
    features = scan.features()
    if scan.write_reason:
        return StatementInfo(StatementKind.WRITE, command, reason=scan.write_reason, features=features)
    return StatementInfo(StatementKind.READ, command, functions=tuple(scan.functions), features=features)


def _scan_query(tokens: list[str], start: int, end: int) -> _Scan:
    """One pass: locking clauses, INTO, data-modifying CTEs, function calls, and the features."""
    scan = _Scan()
    is_with = tokens[start] == "with"
    depth = 0
    in_from = [False]  # per parenthesis depth: inside a FROM list
    cte_list = [is_with]  # per depth: between WITH and its main statement
    previous = ""
    for index in range(start, end):
        token = tokens[index]
        if token == "(":
            following = _at(tokens, index + 1, end)
            if following in _QUERY_STARTERS and index != start:
                scan.subqueries += 1
            if following in _DML and not scan.write_reason:
                scan.write_reason = f"data-modifying {following.upper()} inside a query"
            if cte_list[depth] and previous in ("as", "materialized"):
                scan.ctes += 1
            depth += 1
            in_from.append(False)
            cte_list.append(False)
        elif token == ")":
            if depth > 0:
                depth -= 1
                in_from.pop()
                cte_list.pop()
        elif token == ",":
            if in_from[depth]:
                scan.joins += 1
        elif (initial := token[:1]).isalpha() or initial == "_" or initial == '"':
            following = _at(tokens, index + 1, end)
            if (
                following == "("
                and token not in _NOT_CALLS
                and _is_call(previous, in_from=in_from[depth], in_with_list=cte_list[depth])
            ):
                name = _call_name(tokens, index, start)
                scan.functions.append(name)
                if name in _AGGREGATES:
                    scan.aggregates += 1
            if token == "for" and not scan.write_reason:
                if lock := _locking_clause(tokens, index, end):
                    scan.write_reason = f"SELECT ... FOR {lock} locks rows"
            elif token == "into" and not scan.write_reason:
                scan.write_reason = "SELECT ... INTO creates a table"
            elif token in _DML and (depth == 0 and is_with) and not scan.write_reason:
                scan.write_reason = f"WITH ... {token.upper()} modifies data"
            elif token == "from":
                in_from[depth] = True
                if depth == 0:
                    scan.has_from = True
            elif token in _FROM_ENDERS:
                in_from[depth] = False
                if depth == 0:
                    if token == "where":
                        scan.has_where = True
                    elif token in ("limit", "fetch"):
                        scan.has_limit = True
                if token in ("union", "intersect", "except"):
                    scan.set_operations += 1
            elif token == "join":
                scan.joins += 1
                in_from[depth] = True
            elif token == "over":
                scan.windows += 1
            elif token == "by":
                if previous == "order":
                    scan.order_bys += 1
                elif previous == "group":
                    scan.group_by = True
            elif token == "distinct":
                scan.distinct = True
            elif token == "recursive" and previous == "with":
                scan.recursive = True
            elif token == "with" and following not in ("time", "ordinality", "hold", "check", "local"):
                cte_list[depth] = True
            elif token in _MAIN_STARTERS and previous == ")" and cte_list[depth]:
                cte_list[depth] = False
        previous = token
    scan.unfinished_with = cte_list[0] and not scan.write_reason
    return scan


def _is_call(previous: str, *, in_from: bool, in_with_list: bool) -> bool:
    """Is a name followed by '(' a function call, given the token before it? Doubt says yes."""
    if previous in ("::", "as"):  # a type with a modifier (numeric(10,2)), or an alias column list
        return False
    if in_with_list and previous in ("with", "recursive", ","):
        return False  # WITH name(columns) AS (...)
    if in_from and previous not in _CALL_CONTEXT:
        # FROM t alias(a, b) / FROM f(x) alias(a, b): a column list, not a call
        return not (_is_word(previous) or previous[:1] == '"' or previous == ")")
    return True


def _call_name(tokens: list[str], index: int, start: int) -> str:
    name = _identifier(tokens[index])
    if index - 2 >= start and tokens[index - 1] == ".":
        qualifier = tokens[index - 2]
        if _is_word(qualifier) or qualifier[:1] == '"':
            return f"{_identifier(qualifier)}.{name}"
    return name


def _identifier(token: str) -> str:
    return token[1:] if token[:1] == '"' else token


def _locking_clause(tokens: list[str], index: int, end: int) -> str:
    following = _at(tokens, index + 1, end)
    if following in ("update", "share"):
        return following.upper()
    after = _at(tokens, index + 2, end)
    if following == "no" and after == "key" and _at(tokens, index + 3, end) == "update":
        return "NO KEY UPDATE"
    if following == "key" and after == "share":
        return "KEY SHARE"
    return ""


def _explain(tokens: list[str], start: int, end: int) -> StatementInfo:
    """EXPLAIN only plans (a read); EXPLAIN ANALYZE runs the statement, so it is what the statement is."""
    index = start + 1
    analyze = False
    if _at(tokens, index, end) == "(":
        index += 1
        while index < end and tokens[index] != ")":
            if tokens[index] in ("analyze", "analyse"):
                value = _at(tokens, index + 1, end)
                analyze = value not in ("false", "off", "0", "'false", "'off", "'0")
            index += 1
        index += 1
    else:
        while _at(tokens, index, end) in ("analyze", "analyse", "verbose"):
            analyze = analyze or tokens[index] != "verbose"
            index += 1
    inner = _analyze(tokens, index, end, nested=True)
    if inner.kind is StatementKind.READ:
        return replace(inner, command="EXPLAIN")
    if analyze:
        return replace(inner, command="EXPLAIN ANALYZE", reason=f"EXPLAIN ANALYZE runs a {inner.kind}")
    return StatementInfo(StatementKind.UTILITY, "EXPLAIN", reason=f"EXPLAIN of a {inner.kind}")


def _declare(tokens: list[str], start: int, end: int) -> StatementInfo:
    index = start + 1
    while index < end and tokens[index] != "for":
        if tokens[index] == "with" and _at(tokens, index + 1, end) == "hold":
            reason = "a WITH HOLD cursor outlives its transaction on one server"
            return StatementInfo(StatementKind.UTILITY, "DECLARE", reason=reason)
        index += 1
    query_start = index + 1
    if _at(tokens, query_start, end) not in _QUERY_STARTERS | {"("}:
        return StatementInfo(StatementKind.UNKNOWN, "DECLARE", reason="no query in DECLARE")
    return replace(_query(tokens, query_start, end), command="DECLARE")


def _copy(tokens: list[str], start: int, end: int) -> StatementInfo:
    if _at(tokens, start + 1, end) == "(":
        close = _matching_paren(tokens, start + 1, end)
        inner = _analyze(tokens, start + 2, close, nested=True)
        if inner.kind in (StatementKind.READ, StatementKind.UNKNOWN):
            return replace(inner, command="COPY")
        return StatementInfo(StatementKind.WRITE, "COPY", reason=f"COPY of a {inner.kind}")
    depth = 0
    for index in range(start + 1, end):
        token = tokens[index]
        depth += (token == "(") - (token == ")")
        if depth == 0 and token == "from":
            return StatementInfo(StatementKind.WRITE, "COPY", reason="COPY ... FROM loads data")
        if depth == 0 and token == "to":
            return StatementInfo(StatementKind.READ, "COPY")
    return StatementInfo(StatementKind.UNKNOWN, "COPY", reason="COPY without FROM or TO")


def _matching_paren(tokens: list[str], open_index: int, end: int) -> int:
    depth = 0
    for index in range(open_index, end):
        depth += (tokens[index] == "(") - (tokens[index] == ")")
        if depth == 0:
            return index
    return end


# ---- transaction control and session settings


def _transaction_modes(tokens: list[str], index: int, end: int) -> tuple[bool | None, str | None]:
    """READ ONLY / READ WRITE and ISOLATION LEVEL of BEGIN, START TRANSACTION, SET TRANSACTION."""
    read_only: bool | None = None
    isolation: str | None = None
    while index < end:
        token = tokens[index]
        following = _at(tokens, index + 1, end)
        if token == "isolation" and following == "level":
            level = _at(tokens, index + 2, end)
            if level in ("repeatable", "read"):
                isolation = f"{level} {_at(tokens, index + 3, end)}"
                index += 4
            else:
                isolation = level
                index += 3
            continue
        if token == "read" and following in ("only", "write"):
            read_only = following == "only"
            index += 2
            continue
        index += 1
    return read_only, isolation


def _transaction(tokens: list[str], start: int, end: int) -> StatementInfo:
    first = tokens[start]
    following = _at(tokens, start + 1, end)
    kind = StatementKind.TRANSACTION
    if first in ("begin", "start"):
        if first == "start" and following != "transaction":
            return StatementInfo(StatementKind.UNKNOWN, "START", reason="START without TRANSACTION")
        read_only, isolation = _transaction_modes(tokens, start + 1, end)
        command = "BEGIN" if first == "begin" else "START TRANSACTION"
        return StatementInfo(
            kind, command, transaction=TransactionOp.BEGIN, read_only=read_only, isolation=isolation
        )
    chain = following == "and" and _at(tokens, start + 2, end) == "chain"
    if first in ("commit", "end"):
        if following == "prepared":
            return StatementInfo(kind, "COMMIT PREPARED", transaction=TransactionOp.COMMIT_PREPARED)
        return StatementInfo(kind, "COMMIT", transaction=TransactionOp.COMMIT, chain=chain)
    if first in ("rollback", "abort"):
        if following == "prepared":
            return StatementInfo(kind, "ROLLBACK PREPARED", transaction=TransactionOp.ROLLBACK_PREPARED)
        if following == "to" or (
            following in ("work", "transaction") and _at(tokens, start + 2, end) == "to"
        ):
            return StatementInfo(kind, "ROLLBACK TO SAVEPOINT", transaction=TransactionOp.ROLLBACK_TO)
        return StatementInfo(kind, "ROLLBACK", transaction=TransactionOp.ROLLBACK, chain=chain)
    if first == "savepoint":
        return StatementInfo(kind, "SAVEPOINT", transaction=TransactionOp.SAVEPOINT)
    return StatementInfo(kind, "RELEASE", transaction=TransactionOp.RELEASE)


_TRUE_WORDS = frozenset({"on", "true", "yes", "1", "t", "y"})


def _session(tokens: list[str], start: int, end: int) -> StatementInfo:
    first = tokens[start]
    following = _at(tokens, start + 1, end)
    kind = StatementKind.SESSION
    if first == "discard":
        return StatementInfo(kind, "DISCARD", setting=following, resets_all=following == "all")
    if first == "reset":
        name, _ = _setting_name(tokens, start + 1, end)
        return StatementInfo(kind, "RESET", setting=name, resets_all=name == "all")
    index = start + 1
    local = following == "local"
    if following in ("session", "local"):
        if following == "session" and _at(tokens, index + 1, end) == "characteristics":
            read_only, isolation = _transaction_modes(tokens, index + 2, end)
            return StatementInfo(
                kind, "SET", setting="session characteristics", read_only=read_only, isolation=isolation
            )
        index += 1
    if _at(tokens, index, end) == "transaction":
        read_only, isolation = _transaction_modes(tokens, index + 1, end)
        return StatementInfo(
            StatementKind.TRANSACTION,
            "SET TRANSACTION",
            transaction=TransactionOp.SET_TRANSACTION,
            read_only=read_only,
            isolation=isolation,
        )
    name, index = _setting_name(tokens, index, end)
    if _at(tokens, index, end) in ("to", "="):
        index += 1
    value = _setting_value(_at(tokens, index, end))
    read_only = None
    isolation = None
    if name == "default_transaction_read_only" and value is not None:
        read_only = value.lower() in _TRUE_WORDS
    elif name == "default_transaction_isolation" and value is not None:
        isolation = value.lower()
    return StatementInfo(
        kind, "SET", setting=name, value=value, local=local, read_only=read_only, isolation=isolation
    )


def _setting_name(tokens: list[str], index: int, end: int) -> tuple[str, int]:
    """A setting name (possibly dotted, or two words like 'time zone'); the index after it."""
    name = _identifier(_at(tokens, index, end)).lower()
    index += 1
    if _at(tokens, index, end) == "." and index + 1 < end:
        name = f"{name}.{_identifier(tokens[index + 1]).lower()}"
        index += 2
    elif name in ("time", "session") and _at(tokens, index, end) in ("zone", "authorization"):
        name = f"{name} {tokens[index]}"
        index += 1
    return name, index


def _setting_value(token: str) -> str | None:
    if not token:
        return None
    if token[0] in "'\"":
        return token[1:]
    return token


# --------------------------------------------------------------------------- whole texts


@dataclass(frozen=True, slots=True)
class _Syntax:
    """What the text says, before the function policy judges its calls."""

    statements: tuple[StatementInfo, ...]
    hint: RouteHint | None
    problem: str


def _read_syntax(text: str, backslash_quotes: bool) -> _Syntax:
    lexed = _lex(text, backslash_quotes)
    hint = _strongest_hint(lexed.hints)
    if lexed.problem:
        return _Syntax((), hint, lexed.problem)
    ranges, problem = _split(lexed.tokens)
    if problem:
        return _Syntax((), hint, problem)
    statements = tuple(_analyze(lexed.tokens, start, end) for start, end in ranges)
    return _Syntax(statements, hint, "")


def _classify_text(text: str | bytes, backslash_quotes: bool, policy: FunctionPolicy) -> Classification:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _judge(_read_syntax(text, backslash_quotes), policy)


# Keyed by (text, quoting, policy object): a new config builds a new policy, so no stale entry is hit.
# The text is the caller's str, or its bytes as they came off the wire (then a repeated statement is
# not even decoded); at most _CLASSIFY_CACHE_SIZE entries of at most _CACHED_TEXT_MAX characters or bytes.
_CLASSIFY_CACHE_SIZE = 4096
_classify_cached = functools.lru_cache(maxsize=_CLASSIFY_CACHE_SIZE)(_classify_text)


def _strongest_hint(hints: Sequence[RouteHint]) -> RouteHint | None:
    if RouteHint.PRIMARY in hints:
        return RouteHint.PRIMARY
    return hints[0] if hints else None


def classify(
    sql: str | bytes | bytearray | memoryview,
    *,
    policy: FunctionPolicy = DEFAULT_POLICY,
    standard_conforming_strings: bool = True,
    max_length: int | None = DEFAULT_MAX_LENGTH,
) -> Classification:
    """Classify one Query text (or the text of one Parse). Never raises; doubt means UNKNOWN.

    ``standard_conforming_strings`` is the session's setting (off makes '' strings take
    backslash escapes). ``max_length`` bounds the work: longer texts are UNKNOWN.
    """
    try:
        if (
            type(sql) is bytes
            and len(sql) <= _CACHED_TEXT_MAX
            and (max_length is None or len(sql) <= max_length)
        ):
            # As decoded below, but a memo hit skips the decoding: decoded, a text is no longer.
            return _classify_cached(sql, not standard_conforming_strings, policy)
        text = sql if isinstance(sql, str) else bytes(sql).decode("utf-8", "replace")
        if max_length is not None and len(text) > max_length:
            return unknown(f"statement longer than {max_length} characters is not classified")
        backslash_quotes = not standard_conforming_strings
        if len(text) <= _CACHED_TEXT_MAX:
            return _classify_cached(text, backslash_quotes, policy)
        return _classify_text(text, backslash_quotes, policy)
    except Exception as exc:  # a classifier bug must cost a primary round trip, never a session
        return unknown(f"internal classifier error: {type(exc).__name__}")


def _judge(syntax: _Syntax, policy: FunctionPolicy) -> Classification:
    if syntax.problem:
        return Classification(
            StatementKind.UNKNOWN, hint=syntax.hint, problem=syntax.problem, reason=syntax.problem
        )
    statements = tuple(_judge_functions(statement, policy) for statement in syntax.statements)
    return _combine(statements, syntax.hint, "")


def _judge_functions(statement: StatementInfo, policy: FunctionPolicy) -> StatementInfo:
    if statement.kind is not StatementKind.READ or not statement.functions:
        return statement
    writers = tuple(dict.fromkeys(name for name in statement.functions if policy.may_write(name)))
    if not writers:
        return statement
    shown = ", ".join(f"{name}()" for name in writers[:3])
    return replace(
        statement,
        kind=StatementKind.FUNCTION_CALL,
        reason=f"calls {shown}, which may write",
        writing_functions=writers,
    )


def _combine(statements: tuple[StatementInfo, ...], hint: RouteHint | None, problem: str) -> Classification:
    if len(statements) == 1:
        features = statements[0].features
    else:
        features = NO_FEATURES
        for statement in statements:
            features = features.merged(statement.features)
    if problem:
        kind = StatementKind.UNKNOWN
    elif not statements:
        kind = StatementKind.EMPTY
    else:
        present = {statement.kind for statement in statements}
        kind = next(k for k in _SEVERITY if k in present)
    reason = problem or next(
        (
            s.reason or f"{s.command} is a {kind}"
            for s in statements
            if s.kind is kind and s.kind is not StatementKind.READ
        ),
        "",
    )
    writers = tuple(dict.fromkeys(name for statement in statements for name in statement.writing_functions))
    return Classification(
        kind,
        statements,
        hint=hint,
        problem=problem,
        reason=reason,
        writing_functions=writers,
        features=features,
        complexity=complexity_score(features),
    )


def combine(parts: Iterable[Classification]) -> Classification:
    """One classification for statements sent together (an extended-protocol batch up to Sync)."""
    parts = tuple(parts)
    statements = tuple(statement for part in parts for statement in part.statements)
    hint = _strongest_hint([part.hint for part in parts if part.hint is not None])
    problem = next((part.problem for part in parts if part.problem), "")
    return _combine(statements, hint, problem)
