"""What a legacy profile trigger fills, read with PostgreSQL's own parser (pglast): which profile
columns its function sets from which `new.*` expressions, as profileguard's mapping; what it
could not read (dynamic SQL, branches, several writes, expressions with no source); and the
settings a takeover leaves in effect (the learned mapping, unless one is configured).

A takeover records what it learned in profileguard.replaced_triggers (learned_mapping), so that
later installs, upgrades, `profileguard sql`, audit and the direct path all plan with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pglast
import psycopg
from pglast import ast
from pglast.stream import RawStream
from psycopg.rows import dict_row

from profileguard import sql as sqlfiles
from profileguard.config import Settings, Source, TableRef
from profileguard.errors import ConfigError

# RAISE levels below ERROR only log (PostgreSQL's elog levels: LOG 15 … WARNING 19, ERROR 21).
_ERROR_LEVEL = 21
_TEXT_TYPES = {"text", "varchar", "bpchar", "citext", "name"}
_TIME_FUNCTIONS = {"now", "current_timestamp", "clock_timestamp", "statement_timestamp"}


class _Unreadable(Exception):
    """One thing the function does that no mapping can say."""


@dataclass(frozen=True)
class LegacyMapping:
    """What one legacy trigger's function fills: profile column -> sources (mapping syntax),
    the legacy SQL expression of each (over `new`), and what could not be learned."""

    trigger: str
    function: str
    mapping: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    expressions: Mapping[str, str] = field(default_factory=dict)
    key_expression: str | None = None
    unlearned: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when the whole function was read: the mapping says all it does."""
        return not self.unlearned and self.key_expression is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "function": self.function,
            "mapping": {col: list(srcs) for col, srcs in self.mapping.items()},
            "expressions": dict(self.expressions),
            "key_expression": self.key_expression,
            "unlearned": list(self.unlearned),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LegacyMapping:
        return cls(
            str(data["trigger"]),
            str(data["function"]),
            {str(c): tuple(map(str, s)) for c, s in dict(data.get("mapping") or {}).items()},
            {str(c): str(e) for c, e in dict(data.get("expressions") or {}).items()},
            data.get("key_expression"),
            tuple(map(str, data.get("unlearned") or ())),
        )

    def toml(self, username_column: str | None) -> str:
        """The configuration that says the same (for a hint): [mapping], and the username rule."""
        lines = ["[mapping]"]
        lines += [f"{col} = {json.dumps(list(srcs))}" for col, srcs in self.mapping.items()]
        if username_column in self.mapping:
            lines += ["[username]", 'unverified = "plain"']
        return "\n".join(lines)


def learn(
    definition: str, *, trigger: str, function: str, profile: TableRef, identity_key: str
) -> LegacyMapping:
    """Read `definition` (CREATE FUNCTION … as pg_get_functiondef prints it): the one INSERT
    into `profile` it runs and what each of its columns gets; everything else it does is named
    in `unlearned`."""
    unlearned: list[str] = []
    try:
        tree = pglast.parse_plpgsql(definition)
    except pglast.parser.ParseError as exc:
        return LegacyMapping(trigger, function, unlearned=(f"its body does not parse: {exc}",))
    action = tree[0]["PLpgSQL_function"]["action"]
    inserts: list[ast.InsertStmt] = []
    _walk([action], profile, inserts, unlearned)
    if not inserts:
        unlearned.append(f"no INSERT into {profile} was found")
        return LegacyMapping(trigger, function, unlearned=tuple(unlearned))
    if len(inserts) > 1:
        unlearned.append(f"it inserts into {profile} {len(inserts)} times")
        return LegacyMapping(trigger, function, unlearned=tuple(unlearned))
    return _read_insert(inserts[0], trigger, function, (profile.key, identity_key), unlearned)


def _walk(
    statements: Iterable[Mapping[str, Any]],
    profile: TableRef,
    inserts: list[ast.InsertStmt],
    unlearned: list[str],
) -> None:
    """Collect the INSERTs into `profile`; name every statement a mapping cannot say."""
    for item in statements:
        ((kind, body),) = item.items()
        line = body.get("lineno")
        where = f" (line {line})" if line else ""
        if kind == "PLpgSQL_stmt_block":
            _walk(body.get("body") or (), profile, inserts, unlearned)
            handlers = (body.get("exceptions") or {}).get("PLpgSQL_exception_block", {})
            for handler in handlers.get("exc_list") or ():
                actions = handler["PLpgSQL_exception"].get("action") or ()
                if any(not _only_logs(a) for a in actions):
                    unlearned.append(f"an exception handler that does more than log{where}")
        elif kind == "PLpgSQL_stmt_return" or (kind == "PLpgSQL_stmt_raise" and _only_logs(item)):
            continue
        elif kind == "PLpgSQL_stmt_raise":
            unlearned.append(f"it raises an exception{where}")
        elif kind == "PLpgSQL_stmt_execsql":
            _statement(body["sqlstmt"]["PLpgSQL_expr"]["query"], profile, inserts, unlearned, where)
        elif kind in ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"):
            unlearned.append(f"dynamic SQL (EXECUTE){where}")
        elif kind == "PLpgSQL_stmt_if" and all(map(_only_stops, _branches(body))):
            continue  # a check that fails or skips some sign-ups: profileguard fails none
        elif kind in ("PLpgSQL_stmt_if", "PLpgSQL_stmt_case"):
            unlearned.append(f"a branch (IF/CASE){where}")
        else:
            unlearned.append(f"a {kind.removeprefix('PLpgSQL_stmt_').upper()} statement{where}")


def _branches(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every statement an IF may run, its conditions aside."""
    found = list(body.get("then_body") or ()) + list(body.get("else_body") or ())
    for elsif in body.get("elsif_list") or ():
        found += elsif["PLpgSQL_if_elsif"].get("stmts") or ()
    return found


def _only_stops(item: Mapping[str, Any]) -> bool:
    """RETURN or RAISE: a statement that writes nothing."""
    ((kind, _),) = item.items()
    return kind in ("PLpgSQL_stmt_return", "PLpgSQL_stmt_raise")


def _only_logs(item: Mapping[str, Any]) -> bool:
    """A statement that neither writes nor fails: RETURN, or RAISE below ERROR."""
    ((kind, body),) = item.items()
    if kind == "PLpgSQL_stmt_return":
        return True
    return kind == "PLpgSQL_stmt_raise" and body.get("elog_level", _ERROR_LEVEL) < _ERROR_LEVEL


def _statement(
    query: str,
    profile: TableRef,
    inserts: list[ast.InsertStmt],
    unlearned: list[str],
    where: str,
) -> None:
    try:
        parsed = pglast.parse_sql(query)
    except pglast.parser.ParseError:
        unlearned.append(f"a statement that does not parse{where}")
        return
    for raw in parsed:
        stmt = raw.stmt
        target = getattr(stmt, "relation", None)
        if isinstance(stmt, ast.InsertStmt) and _is_table(target, profile):
            inserts.append(stmt)
        elif isinstance(target, ast.RangeVar):
            name = ".".join(n for n in (target.schemaname, target.relname) if n)
            unlearned.append(f"it also writes {name}{where}")
        else:
            unlearned.append(f"a {type(stmt).__name__} statement{where}")


def _is_table(target: Any, profile: TableRef) -> bool:
    return (
        isinstance(target, ast.RangeVar)
        and target.relname == profile.name
        and target.schemaname in (None, profile.schema)
    )


def _read_insert(
    stmt: ast.InsertStmt,
    trigger: str,
    function: str,
    keys: tuple[str, str],
    unlearned: list[str],
) -> LegacyMapping:
    """What each column of the INSERT gets, as sources (or why it cannot be said); `keys`: the
    profile key and the identity key it must be filled from."""
    profile_key, identity_key = keys
    select = stmt.selectStmt
    columns = [target.name for target in stmt.cols or ()]
    values: Sequence[Any] = ()
    if not columns:
        unlearned.append("its INSERT names no columns")
    elif isinstance(select, ast.SelectStmt) and select.valuesLists:
        if len(select.valuesLists) != 1:
            unlearned.append("its INSERT adds several rows")
        else:
            values = select.valuesLists[0]
    elif isinstance(select, ast.SelectStmt) and select.targetList and not select.fromClause:
        values = [target.val for target in select.targetList]
    else:
        unlearned.append("its INSERT reads from a query")
    mapping: dict[str, tuple[str, ...]] = {}
    expressions: dict[str, str] = {}
    key_expression = None
    for column, value in zip(columns, values, strict=False):
        text = RawStream()(value)
        try:
            sources = _sources(value)
        except _Unreadable as exc:
            unlearned.append(f"{column} = {text} ({exc})")
            continue
        if column == profile_key:
            if sources == (identity_key,):
                key_expression = text
            else:
                unlearned.append(f"{column} = {text} (the profile key, not new.{identity_key})")
            continue
        if not sources:
            continue  # NULL: the column is left to its default either way
        for source in sources:
            Source.parse(source, setting=f"mapping.{column}")
        mapping[column] = sources
        expressions[column] = text
    return LegacyMapping(trigger, function, mapping, expressions, key_expression, tuple(unlearned))


def _sources(node: Any) -> tuple[str, ...]:
    """The sources an expression over `new` reads, first non-empty first."""
    if isinstance(node, ast.A_Const) and node.isnull:
        return ()
    if isinstance(node, ast.TypeCast):
        names = [str(n.sval) for n in _items(node.typeName and node.typeName.names)]
        if names and names[-1] in (*_TEXT_TYPES, "uuid"):
            return _sources(node.arg)
        raise _Unreadable(f"a cast to {'.'.join(names)}")
    if isinstance(node, ast.CoalesceExpr):
        found: list[str] = []
        for arg in _items(node.args):
            found += [s for s in _sources(arg) if s not in found]
        return tuple(found)
    if isinstance(node, ast.FuncCall):
        name = _last(node.funcname)
        args = _items(node.args)
        if name == "lower" and len(args) == 1:
            inner = _sources(args[0])
            if any("|" in s for s in inner):
                raise _Unreadable("a transform of a transform")
            return tuple(f"{s}|lower" for s in inner)
        if (
            name == "split_part"
            and len(args) == 3
            and _constant(args[1]) == "@"
            and _constant(args[2]) == 1
            and _sources(args[0]) == ("email",)
        ):
            return ("email|localpart",)
        if name in _TIME_FUNCTIONS:
            raise _Unreadable("a time, not a value of the user; leave it to the column default")
        raise _Unreadable(f"the function {name}()")
    if isinstance(node, ast.SQLValueFunction):
        raise _Unreadable("a time, not a value of the user; leave it to the column default")
    column = _new_column(node)
    if column is not None:
        return (column,)
    if isinstance(node, ast.A_Expr) and _last(node.name) in ("->>", "#>>"):
        path = _json_path(node)
        if path is not None:
            return (".".join(path),)
    if isinstance(node, ast.A_Const):
        raise _Unreadable("a constant")
    raise _Unreadable("an expression with no source in the user row")


def _items(nodes: Any) -> tuple[Any, ...]:
    """A node list (None when empty) as a tuple."""
    return tuple(nodes or ())


def _last(names: Any) -> str | None:
    """The last part of a qualified name (an operator's or a function's), if any."""
    items = _items(names)
    return str(items[-1].sval) if items and isinstance(items[-1], ast.String) else None


def _constant(node: Any) -> Any:
    if isinstance(node, ast.A_Const) and not node.isnull:
        value = node.val
        return getattr(value, "sval", getattr(value, "ival", None))
    return None


def _new_column(node: Any) -> str | None:
    """`new.column` → column."""
    fields = _items(node.fields) if isinstance(node, ast.ColumnRef) else ()
    if len(fields) == 2 and all(isinstance(f, ast.String) for f in fields):
        record, column = fields
        if str(record.sval).lower() == "new":
            return str(column.sval)
    return None


def _json_path(node: Any) -> list[str] | None:
    """`new.column -> 'a' ->> 'b'` or `new.column #>> '{a,b}'` → [column, a, b]."""
    operator = _last(node.name)
    key = _constant(node.rexpr)
    if not isinstance(key, str):
        return None
    if operator == "#>>":
        if not (key.startswith("{") and key.endswith("}")):
            return None
        keys = [k.strip().strip('"') for k in key[1:-1].split(",")]
    else:
        keys = [key]
    left = node.lexpr
    column = _new_column(left)
    if column is not None:
        return [column, *keys]
    if operator == "->>" and isinstance(left, ast.A_Expr) and _last(left.name) == "->":
        inner = _json_path_arrow(left)
        return None if inner is None else [*inner, *keys]
    return None


def _json_path_arrow(node: ast.A_Expr) -> list[str] | None:
    key = _constant(node.rexpr)
    if not isinstance(key, str):
        return None
    column = _new_column(node.lexpr)
    if column is not None:
        return [column, key]
    left = node.lexpr
    if isinstance(left, ast.A_Expr) and _last(left.name) == "->":
        inner = _json_path_arrow(left)
        return None if inner is None else [*inner, key]
    return None


def combined(learned: Sequence[LegacyMapping]) -> LegacyMapping | None:
    """Several replaced triggers' mappings as one (a column two of them fill is not learned)."""
    if not learned:
        return None
    if len(learned) == 1:
        return learned[0]
    mapping: dict[str, tuple[str, ...]] = {}
    expressions: dict[str, str] = {}
    unlearned: list[str] = []
    for item in learned:
        unlearned += [f"{item.function}: {text}" for text in item.unlearned]
        for column, sources in item.mapping.items():
            if column in mapping:
                unlearned.append(f"{column} is filled by more than one legacy trigger")
            mapping[column] = sources
            expressions[column] = item.expressions[column]
    key = next((i.key_expression for i in learned if i.key_expression), None)
    return LegacyMapping(
        ", ".join(i.trigger for i in learned),
        ", ".join(i.function for i in learned),
        mapping,
        expressions,
        key,
        tuple(unlearned),
    )


def adopt(
    settings: Settings, learned: Sequence[LegacyMapping], *, taking_over: bool
) -> tuple[Settings, list[str]]:
    """The settings in effect after a takeover: the learned mapping (the username as the legacy
    function gave it, when free and valid: `unverified = "plain"`) wherever the configuration
    says nothing; what is configured always wins. `taking_over`: a function that cannot be read
    stops the install (ConfigError naming the fix) unless the mapping is configured."""
    legacy = combined(learned)
    if legacy is None or settings.learned_from:
        return settings, []
    configured = (
        "mapping" in settings.configured
        or not settings.mapping_is_default
        or settings.preset != "default"
    )
    where = f"trigger {legacy.trigger} ({legacy.function})"
    if not legacy.complete:
        missing = "; ".join(legacy.unlearned) or "what fills the profile key"
        if configured:
            return settings, [
                f"mapping: could not learn what {where} fills ({missing}); "
                "the mapping in profileguard.toml is used as written"
            ]
        if taking_over:
            raise ConfigError(
                f"--replace-trigger: could not learn what {where} fills: {missing}",
                hint="write the mapping in profileguard.toml (an explicit [mapping] is used as "
                "written), then run the install again; what could be learned:\n"
                + legacy.toml(settings.username_column),
            )
        return settings, [
            f"mapping: could not learn what {where} fills ({missing}); "
            "the configured mapping is used (see: profileguard audit)"
        ]
    if configured:
        return settings, [
            f"mapping: written in profileguard.toml, used instead of what {where} "
            "filled (see: profileguard audit)"
        ]
    mapping = {
        col: tuple(Source.parse(s, setting=f"mapping.{col}") for s in sources)
        for col, sources in legacy.mapping.items()
    }
    username = settings.username
    if settings.username_column in mapping and "username.unverified" not in settings.configured:
        username = replace(username, unverified="plain")
    adopted = replace(
        settings,
        mapping=mapping,
        preset=None,
        username=username,
        learned_from=tuple(i.trigger for i in learned),
    )
    # One note per column: short lines, also where the install records them in SQL.
    return adopted, [f"mapping: learned from {where}"] + [
        f"mapping: {column} = {' or '.join(sources)}" for column, sources in legacy.mapping.items()
    ]


def recorded(
    conn: psycopg.Connection, identity: TableRef, profile: TableRef
) -> list[LegacyMapping]:
    """What the takeovers of triggers on `identity` learned (learned again from the saved
    function where an earlier version recorded nothing); nothing where this role may not read
    profileguard's tables (a client's role: the installed functions carry the mapping)."""
    queries = sqlfiles.queries("queries/takeover.sql")
    found = conn.execute(queries["learned_mappings_readable"]).fetchone()
    if not (found and found[0]):
        return []
    query = queries["learned_mappings"]
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, {"table": str(identity)}).fetchall()
    learned = []
    for item in rows:
        if item["learned"] is not None:
            learned.append(LegacyMapping.from_json(item["learned"]))
        elif item["definition"] is not None:
            learned.append(
                learn(
                    str(item["definition"]),
                    trigger=str(item["trigger_name"]),
                    function=str(item["function_name"]),
                    profile=profile,
                    identity_key=identity.key,
                )
            )
    return learned
