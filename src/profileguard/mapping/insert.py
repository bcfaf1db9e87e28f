"""The INSERT … SELECT that derives a profile from its user: the username's cleaning, candidates
and collision checks, the other mapped columns, optimistic (the sign-up trigger's first try) or
not.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from profileguard import sqlexpr
from profileguard.config import Source
from profileguard.mapping.confusables import decomposed
from profileguard.mapping.constants import character_classes, constants
from profileguard.mapping.plan import (
    LONG_SUFFIX,
    SHORT_SUFFIX,
    USERNAME_FALLBACK,
    Plan,
    UniqueKey,
    UsernameConstraints,
    cast,
    coalesced,
    coalesced_as,
    source_expr,
    unwrapped,
)


def _constant(name: str, named: bool, plan: Plan | None = None) -> sql.Composable:
    """The constant `name` in a statement: a call of its installed function (`named`; folded into
    the plan as the constant), else the value itself (the statement runs before install too)."""
    if named:
        return sql.SQL(f"profileguard.{name}()")
    value = constants(plan)[name] if plan is not None else character_classes()[name]
    if isinstance(value, list):
        return sql.SQL("{}::text[]").format(sql.Literal(value))
    return sql.Literal(value)


def cut_username(expr: sql.Composable, limit: int) -> sql.Composable:
    """`expr` cut to what cleaning may need for a name of `limit` characters: a megabyte of
    metadata is not normalized for a name of 64."""
    return sql.SQL("left({}, {})").format(expr, sql.Literal(limit * 4 + 16))


# Printable ASCII without surrounding spaces: already clean, so most names skip the cleaning.
PLAIN_ASCII = "^[!-~]([ -~]*[!-~])?$"
# The same, but not starting as a JSON array or object prints ('[', '{'; ']' and a backslash
# too, which a range cannot leave out without an escape): the fast path of the name a sign-up
# chose, which may be an array or an object printed as text.
PLAIN_NAME = "^[!-Z^-z|-~]([ -~]*[!-~])?$"


def clean_username(
    expr: sql.Composable,
    constraints: UsernameConstraints,
    *,
    lowercase: bool,
    limit: int,
    cut: bool = True,
    named: bool = False,
    otherwise: sql.Composable | None = None,
) -> sql.Composable:
    """`expr` as a username base: invisible characters removed, NFKC, spaces trimmed, optionally
    lowercased, NULL when nothing is left. Inline SQL (no function call), so the same statement
    runs before install too, and bulk inserts stay set-based. `cut` False: `expr` is already
    `cut_username` of the name (a column of the select below). The base never ends with a space
    separator (`_Names.plain` relies on it). `named`: the character classes are the installed
    constant functions (folded into the plan) instead of literals.

    `otherwise`: the rare path (`username_rare`), taken instead for a name the cleaning would
    leave empty (nothing but invisible characters and spaces) or that starts as a JSON array or
    object does (`rare_names`); only its call is set up with the statement."""
    if cut:
        expr = cut_username(expr, limit)
    value = expr
    value = sql.SQL("regexp_replace({}, {}, '', 'g')").format(
        value, _constant("invisible_characters", named)
    )
    # Normalized after the removal (a removed character may have kept two others apart) and
    # before the trim (NFKC turns ideographic and other wide spaces into plain ones).
    if constraints.nfkc:
        value = sql.SQL("normalize({}, NFKC)").format(value)
    value = sql.SQL("regexp_replace({}, {}, '', 'g')").format(
        value, _constant("edge_spaces", named)
    )
    if lowercase:  # after NFKC, which maps some letters to capitals (U+210D to H)
        value = _lower(value, constraints)
    plain_ascii = _lower(expr, constraints) if lowercase else expr
    if otherwise is None:
        value = sql.SQL("case when {cut} ~ {fast} then {ascii} else {value} end").format(
            cut=expr, fast=sql.Literal(PLAIN_ASCII), ascii=plain_ascii, value=value
        )
    else:  # a NULL name takes neither test: NULL, with no call
        value = sql.SQL(
            "case when {cut} ~ {fast} then {ascii} when {cut} ~ {rare} then {otherwise}"
            " else {value} end"
        ).format(
            cut=expr,
            fast=sql.Literal(PLAIN_NAME),
            ascii=plain_ascii,
            rare=_constant("rare_names", named),
            otherwise=otherwise,
            value=value,
        )
    return sql.SQL("nullif({}, '')").format(value)


def _lower(value: sql.Composable, constraints: UsernameConstraints) -> sql.Composable:
    # lower() under the C collation leaves non-ASCII letters alone: use a Unicode one.
    if constraints.lower_collation:
        return sql.SQL("lower({} collate {})").format(value, sql.SQL(constraints.lower_collation))
    return sql.SQL("lower({})").format(value)


def _expr_with(text: str, column: str, value: sql.Composable) -> sql.Composable:
    """Server-printed expression `text` with `column` replaced by `value` (parenthesized)."""
    parts: list[sql.Composable] = []
    marker = "\x00"
    pieces = sqlexpr.substitute(text, column, marker).split(f"({marker})")
    for i, piece in enumerate(pieces):
        if i:
            parts.append(sql.SQL("({})").format(value))
        parts.append(sql.SQL(piece))  # catalog text, never user input
    return sql.Composed(parts)


class _Names:
    """SQL pieces of the username candidates for one plan (see `_username_outer`)."""

    def __init__(
        self,
        plan: Plan,
        constraints: UsernameConstraints,
        *,
        lean: bool = False,
        named: bool = False,
        probed: bool = False,
    ):
        self.plan = plan
        self.named = named
        # Each lookup an index probe per row, never a hash of the profile table (OFFSET 0 keeps
        # the planner from choosing one): the trigger keeps its plan for the session, made for
        # the row count of the first statement that ran it.
        self.probed = probed
        self.username_constraints = constraints
        self.policy = plan.settings.username
        self.column = plan.profile.columns[constraints.column]
        self.max = (
            constraints.max_length if constraints.max_length is not None else self.policy.max_length
        )
        # The signup trigger's first try: tests the lengths of its candidates prove are left
        # out, and a name short enough is not cut (each test is evaluated, and each expression
        # set up, once more per signup).
        self.lean = lean

    def typed(self, value: sql.Composable) -> sql.Composable:
        """`value` (text) as the column's type: as it is for a text column (the parser adds no
        cast from text to text, so leaving it out changes no plan)."""
        if self.column.type == "text":
            return sql.SQL("({})").format(value)
        return sql.SQL("({})::{}").format(value, sql.SQL(self.column.type))

    def plain(self, base: sql.Composable, *, column: bool = False) -> sql.Composable:
        """The name given plainly: `base` cut to the column. `column`: `base` is a column of the
        select below (it is repeated)."""
        # Cut names are trimmed again: the cut may end on a space (U+1680 is the one space
        # separator NFKC does not turn into U+0020).
        cut = sql.SQL("rtrim(left({}, {}), {})").format(
            base, sql.Literal(self.max), sql.Literal(" \u1680")
        )
        if not (self.lean and column):
            return cut
        # At most `max` bytes is at most `max` characters: not cut, and a base or a slug never
        # ends with a space, so the trim would give it back unchanged.
        return sql.SQL("case when octet_length({base}) <= {max} then {base} else {cut} end").format(
            base=base, max=sql.Literal(self.max), cut=cut
        )

    def suffix_digits(self, digits: int) -> tuple[int, int]:
        """(characters kept of the base, hex digits of the hash) of a suffixed candidate."""
        digits = max(1, min(digits, self.max - 1))
        return max(0, self.max - 1 - digits), digits

    def suffixed(
        self,
        base: sql.Composable | str,
        digits: int = SHORT_SUFFIX,
        hashed: sql.Composable = sql.SQL("c.pg_hash"),
    ) -> sql.Composable:
        """`base` (an expression, or a literal name cut here) + '_' + `digits` of the hash."""
        # The suffix is a hash of the whole key: keys sharing a prefix get different suffixes.
        keep, digits = self.suffix_digits(digits)
        if isinstance(base, str):
            return sql.SQL("{} || left({}, {})").format(
                sql.Literal(base[:keep] + "_"), hashed, sql.Literal(digits)
            )
        return sql.SQL("left({}, {}) || '_' || left({}, {})").format(
            base, sql.Literal(keep), hashed, sql.Literal(digits)
        )

    def suffixed_lengths(self, base: str | None, digits: int = SHORT_SUFFIX) -> tuple[int, int]:
        """The fewest and most characters of `suffixed` of a non-empty base (of the literal
        `base` when given): md5 gives 32 hex digits, the base at least one character."""
        keep, digits = self.suffix_digits(digits)
        if base is not None:
            size = min(len(base), keep) + 1 + digits
            return size, size
        return min(1, keep) + 1 + digits, keep + 1 + digits

    def reserved(self, value: sql.Composable, *, ascii: bool = False) -> sql.Composable:
        """The candidate is a reserved name (case-insensitive) or, when it is not plain ASCII,
        confusable with one (its skeleton is one's, see `reserved_confusable`): the skeleton's
        call is the rare path, behind the fast path's pattern. `ascii`: the candidate is known
        to be printable ASCII, lowered byte by byte (the same result as the Unicode lowering,
        without it) and with no skeleton to take."""
        if not self.policy.reserved:
            return sql.SQL("false")
        lowered = (
            sql.SQL('lower({} collate "C")').format(value)
            if ascii
            else _lower(value, self.username_constraints)
        )
        exact = sql.SQL("{} = any({})").format(
            lowered, _constant("reserved_names", self.named, self.plan)
        )
        if ascii or not self.username_constraints.nfkc:
            return exact
        # The fast path's own pattern: compiled and cached by the cleaning's test already.
        return sql.SQL("({} or ({} !~ {} and {}))").format(
            exact,
            value,
            sql.Literal(PLAIN_NAME),
            reserved_confusable(self.plan, value, named=self.named),
        )

    def given(
        self,
        base: sql.Composable,
        plain: sql.Composable,
        trusted: sql.Composable,
        key: sql.Composable,
        *,
        ascii: bool = False,
    ) -> tuple[sql.Composable, sql.Composable]:
        """(whether the plain name is free, the username) when the suffixed name is the only
        other candidate (`_hash_inline`): the plain name when it may be given plainly, is not
        reserved and passes the policy, else the base with the suffix of the key's hash."""
        free = sql.SQL("{} and not {} and {}").format(
            trusted, self.reserved(plain, ascii=ascii), self.ok(plain, (1, self.max))
        )
        final = sql.SQL("case when {} is null then null when {} then {} else {} end").format(
            base, free, plain, self.suffixed(base, hashed=sql.SQL("md5({}::text)").format(key))
        )
        return free, self.typed(final)

    def ok(self, value: sql.Composable, lengths: tuple[int, int] | None = None) -> sql.Composable:
        """The candidate passes the policy and every CHECK on the column (NULL passes a CHECK).
        `lengths`: the fewest and most characters the candidate can have (when `lean`, a length
        test they prove is left out)."""
        typed = self.typed(value)
        low, high = self.username_constraints.min_length or 1, self.max
        tests: list[sql.Composable] = []
        if not self.lean or lengths is None or (lengths[0] < low and lengths[1] > high):
            tests.append(
                sql.SQL("char_length({}) between {} and {}").format(
                    value, sql.Literal(low), sql.Literal(high)
                )
            )
        elif lengths[0] < low:
            tests.append(sql.SQL("char_length({}) >= {}").format(value, sql.Literal(low)))
        elif lengths[1] > high:
            tests.append(sql.SQL("char_length({}) <= {}").format(value, sql.Literal(high)))
        if self.policy.pattern is not None:
            tests.append(sql.SQL("{} ~ {}").format(value, sql.Literal(self.policy.pattern)))
        for _, body in self.username_constraints.checks:
            if self.lean and self._implied(body, low, high):
                continue
            tests.append(
                sql.SQL("coalesce(({}), true)").format(
                    _expr_with(body, self.username_constraints.column, typed)
                )
            )
        if not tests:
            return sql.SQL("true")
        return sql.SQL("({})").format(sql.SQL(" and ").join(tests))

    def _implied(self, body: str, low: int, high: int) -> bool:
        """A CHECK on a text or varchar column made only of character-length bounds that the
        length `ok` ensures ([low, high]) satisfies: the lean test leaves it out."""
        if self.column.type not in ("text", "character varying") and not (
            self.column.type.startswith("character varying(")
        ):
            return False
        bounds = _length_bounds(body, self.username_constraints.column)
        return bounds is not None and low >= bounds[0] and high <= bounds[1]

    def key(self, key: UniqueKey, value: sql.Composable) -> sql.Composable:
        """The unique key the index would store for the candidate."""
        expr = _expr_with(key.key, self.username_constraints.column, self.typed(value))
        if key.collation:
            return sql.SQL("({}) collate {}").format(expr, sql.SQL(key.collation))
        return expr

    def taken(
        self, value: sql.Composable, other_than: sql.Composable | None = None
    ) -> sql.Composable:
        """An existing profile holds the candidate's key in one of the unique indexes (one
        whose key is not `other_than`: a profile never collides with itself)."""
        keys = self.username_constraints.keys
        if not keys:
            return sql.SQL("false")
        profile = sql.Identifier(self.plan.profile.ref.schema, self.plan.profile.ref.name)
        probes = []
        for key in keys:
            # Unqualified column names in the key and predicate are those of x.
            where = sql.SQL("{} = {}").format(sql.SQL(key.key), self.key(key, value))
            if key.predicate:
                where = sql.SQL("{} and ({})").format(where, sql.SQL(key.predicate))
            if other_than is not None:
                where = sql.SQL("{} and x.{} <> {}").format(
                    where, sql.Identifier(self.plan.settings.profile.key), other_than
                )
            fence = sql.SQL(" offset 0" if self.probed else "")
            probes.append(
                sql.SQL("exists (select from {} x where {}{})").format(profile, where, fence)
            )
        return sql.SQL("({})").format(sql.SQL(" or ").join(probes))


@dataclass(frozen=True)
class _Provenance:
    """Where the username comes from, as SQL over the innermost select `a`."""

    names: Sequence[sql.Composable]  # each source, in order
    everything: sql.Composable  # the first source with a value (or the fallback)
    oauth: sql.Composable | None  # the sign-up came through a provider (None: not recorded)
    vouched: sql.Composable  # the first name a provider writes
    vouched_first: bool  # the names a provider writes come first anyway: no reordering needed


def _provenance(
    plan: Plan,
    constraints: UsernameConstraints,
    sources: tuple[Source, ...],
    named: bool,
    names: Sequence[sql.Composable] | None = None,
) -> _Provenance:
    """`names`: each source's expression (default: its column of the innermost select)."""
    if names is None:
        names = [sql.SQL("a.{}").format(sql.Identifier(f"pg_n{j}")) for j in range(len(sources))]
    # Names read from the metadata a provider writes; an email's local part is the user's.
    vouchable_at = [
        j for j, source in enumerate(sources) if source.path and source.transform != "localpart"
    ]
    vouchable = [names[j] for j in vouchable_at]
    fallback = sql.Literal(USERNAME_FALLBACK) if constraints.not_null else sql.NULL
    everything = sql.SQL("coalesce({}, {})").format(sql.SQL(", ").join(names), fallback)
    oauth = None
    if constraints.provider is not None:
        oauth = sql.SQL("(a.pg_provider is not null and a.pg_provider <> all({}))").format(
            _constant("unverified_providers", named, plan)
        )
    vouched = (
        sql.SQL("coalesce({})").format(sql.SQL(", ").join(vouchable)) if vouchable else sql.NULL
    )
    return _Provenance(
        names,
        everything,
        oauth,
        vouched,
        vouched_first=vouchable_at == list(range(len(vouchable_at))),
    )


def _username_raw(
    plan: Plan,
    constraints: UsernameConstraints,
    sources: tuple[Source, ...],
    named: bool,
    names: Sequence[sql.Composable] | None = None,
) -> sql.Composable:
    """The name to clean, chosen once per row (a column of its own select, so the cleaning
    refers to it instead of repeating the choice): provenance first, for an OAuth sign-up the
    names its provider vouches for come before the ones the user typed (the same choice when
    they come first in the mapping anyway, as in the default one: one CASE fewer to set up).
    `names`: the choice among these instead (the rare path's cleaned names)."""
    p = _provenance(plan, constraints, sources, named, names)
    if p.oauth is None or p.vouched_first:
        return p.everything
    return sql.SQL(
        "case when {oauth} then coalesce({vouched}, {everything}) else {everything} end"
    ).format(oauth=p.oauth, vouched=p.vouched, everything=p.everything)


def _trusted(
    plan: Plan, constraints: UsernameConstraints, sources: tuple[Source, ...], named: bool
) -> sql.Composable:
    """Whether the row's name may be given plainly (over the innermost select `a`): written by
    an operator (no provider recorded), or vouched for by its provider, or any name when the
    policy gives unverified names plainly."""
    p = _provenance(plan, constraints, sources, named)
    any_name = sql.SQL("coalesce({}) is not null").format(sql.SQL(", ").join(p.names))
    if p.oauth is None or plan.settings.username.unverified == "plain":
        return any_name
    return sql.SQL(
        "case when a.pg_provider is null then {} when {} then {} is not null else false end"
    ).format(any_name, p.oauth, p.vouched)


def _username_layers(
    plan: Plan,
    constraints: UsernameConstraints,
    sources: tuple[Source, ...],
    *,
    optimistic: bool = False,
    named: bool = False,
    fallback: bool = True,
) -> tuple[list[sql.Composable], list[sql.Composable], list[sql.Composable]]:
    """Columns of the innermost select (each source as text; the provider), of the one above it
    (the chosen name `pg_raw`) and of the middle one (the name cleaned once, and whether it may
    be given plainly). A chosen name that cleans to nothing, or that starts as a JSON array or
    object does, takes the rare path (`username_rare`): the next source that is a name, or NULL
    (no username, or 'user' + the suffix). Rows with no provider recorded were written by an
    operator. `optimistic`: the chosen name is cut (`pg_cut`) and `pg_trusted` decided a select
    lower, so the cleaning does not repeat the cut. `fallback` False: no 'user' base for a NOT
    NULL column (an update keeps the stored name instead)."""
    policy = plan.settings.username
    inner: list[sql.Composable] = [
        sql.SQL("{} as {}").format(source_expr(source), sql.Identifier(f"pg_n{j}"))
        for j, source in enumerate(sources)
    ]
    if constraints.provider is None:
        inner.append(sql.SQL("null::text as pg_provider"))
    else:
        inner.append(sql.SQL("{} as pg_provider").format(source_expr(constraints.provider)))
    trusted = _trusted(plan, constraints, sources, named)
    limit = constraints.max_length or policy.max_length
    raw = _username_raw(plan, constraints, sources, named)
    cleaned = clean_username(
        sql.SQL("a.pg_cut" if optimistic else "a.pg_raw"),
        constraints,
        lowercase=policy.lowercase,
        limit=limit,
        cut=not optimistic,
        named=named,
        otherwise=username_rare(plan, sql.SQL("a.pg_key"), named=named),
    )
    if constraints.not_null and fallback:
        cleaned = sql.SQL("coalesce({}, {})").format(cleaned, sql.Literal(USERNAME_FALLBACK))
    if optimistic:
        return (
            inner,
            [
                sql.SQL("{} as pg_cut").format(cut_username(raw, limit)),
                sql.SQL("{} as pg_trusted").format(trusted),
            ],
            [sql.SQL("{} as pg_base").format(cleaned)],
        )
    middle: list[sql.Composable] = [
        sql.SQL("{} as pg_base").format(cleaned),
        sql.SQL("{} as pg_trusted").format(trusted),
    ]
    return inner, [sql.SQL("{} as pg_raw").format(raw)], middle


def username_update_layers(
    plan: Plan, value: str, *, named: bool = True
) -> tuple[list[sql.Composable], list[tuple[list[sql.Composable], str]]]:
    """The username rule on an update (a `follow` or `fill_empty` username): (the columns the
    select over the identity rows `u` adds, the selects above it) — each a list of columns and
    the alias of the select it reads, innermost first; the last gives the column `value`.

    `value` is the name the profile may now hold, else NULL (the stored one stays): the name as
    a sign-up would clean and choose it (a source that is no name falls through), given plainly
    where a sign-up would give it plainly (vouched for, or written by an operator) and with the
    key's suffix where it would be suffixed; never a reserved name or one confusable with it,
    and only when it passes the policy and the column's CHECKs and no other profile holds it in
    a unique index. A taken, reserved or failing name is not replaced by another candidate:
    the profile keeps its name, and the other columns of the row are synced all the same."""
    constraints = plan.username_constraints
    assert constraints is not None and constraints.column in plan.mapping
    sources = plan.mapping[constraints.column]
    inner, raw, middle = _username_layers(plan, constraints, sources, named=named, fallback=False)
    n = _Names(plan, constraints, named=named)
    plain, suffixed, key = sql.SQL("c.pg_plain"), sql.SQL("c.pg_suffixed"), sql.SQL("c.pg_key")

    def free(candidate: sql.Composable) -> sql.Composable:
        return sql.SQL("{} and not {}").format(n.ok(candidate), n.taken(candidate, key))

    decided = sql.SQL(
        "case when c.pg_base is null or {reserved} then null"
        " when c.pg_trusted then case when {plain_free} then {plain} end"
        " when {suffixed_free} then {suffixed} end as {value}"
    ).format(
        reserved=n.reserved(plain),
        plain_free=free(plain),
        plain=plain,
        suffixed_free=free(suffixed),
        suffixed=suffixed,
        value=sql.Identifier(value),
    )
    candidates = [
        sql.SQL("b.*"),
        sql.SQL("{} as pg_plain").format(n.plain(sql.SQL("b.pg_base"))),
        sql.SQL("{} as pg_suffixed").format(
            n.suffixed(sql.SQL("b.pg_base"), hashed=sql.SQL("md5(b.pg_key::text)"))
        ),
    ]
    return inner, [
        ([sql.SQL("a.*"), *raw], "a"),
        ([sql.SQL("a.*"), *middle], "a"),
        (candidates, "b"),
        ([sql.SQL("c.*"), decided], "c"),
    ]


def username_rare(plan: Plan, key: sql.Composable, *, named: bool) -> sql.Composable:
    """The cleaning's rare path (see `clean_username`): the base of the user whose key is
    `key`, made again from the user's row (`username_base_query`). `named`: a call of the
    installed profileguard.username_base, one node to set up with the statement that holds it;
    else the query itself, as a scalar subquery."""
    if named:
        return sql.SQL("profileguard.username_base({})").format(key)
    return sql.SQL("({})").format(username_base_query(plan, key, named=False))


def username_base_query(plan: Plan, key: sql.Composable, *, named: bool) -> sql.Composable:
    """SELECT the username base of the user whose key is `key`, read from the identity table
    (a sign-up's new row is there when the trigger runs): each source in the choice's order,
    a JSON array or object passed over as no name, the first one not empty after cleaning.
    Under the provenance rule, a provider's name that cleans to nothing vouches for no other
    source: an OAuth sign-up then falls through to the names its provider writes only. NULL
    where none is left."""
    constraints = plan.username_constraints
    if constraints is None or constraints.column not in plan.mapping:
        return sql.SQL("select null::pg_catalog.text")
    sources = plan.mapping[constraints.column]
    policy = plan.settings.username
    inner: list[sql.Composable] = [
        sql.SQL("{} as {}").format(_scalar_source(plan, source), sql.Identifier(f"pg_n{j}"))
        for j, source in enumerate(sources)
    ]
    if constraints.provider is None:
        inner.append(sql.SQL("null::text as pg_provider"))
    else:
        inner.append(sql.SQL("{} as pg_provider").format(source_expr(constraints.provider)))
    p = _provenance(plan, constraints, sources, named)
    names = [
        clean_username(
            name,
            constraints,
            lowercase=policy.lowercase,
            limit=constraints.max_length or policy.max_length,
            named=named,
        )
        for name in p.names
    ]
    vouchable = [bool(s.path) and s.transform != "localpart" for s in sources]
    if p.oauth is not None and policy.unverified != "plain" and not all(vouchable):
        names = [
            name if vouched else sql.SQL("case when not {} then {} end").format(p.oauth, name)
            for vouched, name in zip(vouchable, names, strict=True)
        ]
    identity = plan.settings.identity
    # The select below is `a`, as the statement's innermost one (the names and the provider
    # by the same columns); inside it, an outer `a` in `key` is the statement's.
    return sql.SQL("select {} from (select {} from {} u where u.{} = {}) a").format(
        _username_raw(plan, constraints, sources, named, names),
        sql.SQL(", ").join(inner),
        sql.Identifier(identity.schema, identity.name),
        sql.Identifier(identity.key),
        key,
    )


def _scalar_source(plan: Plan, source: Source) -> sql.Composable:
    """`source_expr` of `source`, for a path in a JSON column only when the value there is not
    an array or an object (`->>` would print it as JSON text)."""
    column = plan.identity.columns.get(source.column)
    if not source.path or column is None or not column.is_json:
        return source_expr(source)
    col = sql.Identifier("u", source.column)
    if len(source.path) == 1:
        value = sql.SQL("{} -> {}").format(col, sql.Literal(source.path[0]))
    else:
        value = sql.SQL("{} #> {}").format(col, sql.Literal(list(source.path)))
    typeof = sql.SQL("jsonb_typeof" if column.type == "jsonb" else "json_typeof")
    return sql.SQL("case when {}({}) not in ('array', 'object') then {} end").format(
        typeof, value, source_expr(source)
    )


def reserved_confusable(plan: Plan, value: sql.Composable, *, named: bool) -> sql.Composable:
    """Whether `value` is confusable with a reserved name (`reserved_confusable_test`):
    `named`, a call of the installed function; else the test itself."""
    if named:
        return sql.SQL("profileguard.reserved_confusable({})").format(value)
    return sql.SQL("({})").format(reserved_confusable_test(plan, value, named=False))


def reserved_confusable_test(plan: Plan, value: sql.Composable, *, named: bool) -> sql.Composable:
    """`value`, when it is not plain ASCII, has the skeleton of a reserved name (Unicode TR39:
    lowercased, NFKD, combining marks removed, each character confusable with one a reserved
    name uses replaced by it; see mapping/confusables.py): 'admin' with a Cyrillic a (U+0430),
    or with a combining dot above its i (U+0307), is 'admin'. Plain ASCII names are compared as
    they are."""
    constraints = plan.username_constraints
    reserved = constants(plan)["reserved_names"]
    if constraints is None or not reserved or not constraints.nfkc:
        return sql.SQL("false")
    names = _constant("reserved_names", named, plan)
    skeleton = _skeleton(value, constraints, named, plan)
    test = sql.SQL("{} = any({})").format(skeleton, names)
    if any(decomposed(name) != name for name in reserved):
        # A reserved name that is not its own skeleton: theirs are made here too.
        test = sql.SQL("exists (select from unnest({}) r(name) where {} = {})").format(
            names, _skeleton(sql.SQL("r.name"), constraints, named, plan), skeleton
        )
    return sql.SQL("{} !~ '^[ -~]*$' and {}").format(value, test)


def _skeleton(
    value: sql.Composable, constraints: UsernameConstraints, named: bool, plan: Plan
) -> sql.Composable:
    decomposed_value = sql.SQL("regexp_replace(normalize({}, NFKD), {}, '', 'g')").format(
        _lower(value, constraints), _constant("combining_marks", named)
    )
    return sql.SQL("translate({}, {}, {})").format(
        decomposed_value,
        _constant("confusable_characters", named, plan),
        _constant("confusable_prototypes", named, plan),
    )


_LENGTH_TEST = re.compile(
    r"(?:char_length|character_length|length)\(\(?\s*(?P<col>\"?\w+\"?)\s*\)?"
    r"(?:::[\w ]+(?:\(\d+\))?)?\s*\)\s*(?:>=|<=|>|<|=|<>)\s*\d+"
    r"|(?:char_length|character_length|length)\(\(?\s*(?P<col2>\"?\w+\"?)\s*\)?"
    r"(?:::[\w ]+(?:\(\d+\))?)?\s*\)\s*BETWEEN\s+\d+\s+AND\s+\d+"
)


_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_BOUND = re.compile(
    r"(?:char_length|character_length|length)\((?P<col>\(\s*\"?\w+\"?\s*\)|\"?\w+\"?)"
    r"(?:::(?:text|character varying(?:\(\d+\))?))?\)\s*(?P<op>>=|<=|>|<)\s*(?P<n>\d+)"
)


def _length_bounds(body: str, column: str) -> tuple[int, int] | None:
    """(fewest, most) characters a CHECK allows when it is nothing but a conjunction of
    character-length comparisons of `column` with constants; None for any other CHECK."""
    low, high = 0, sys.maxsize
    for term in _AND.split(body.strip()):
        term = term.strip()
        while term.startswith("(") and term.endswith(")") and unwrapped(term) != term:
            term = unwrapped(term).strip()
        match = _BOUND.fullmatch(term)
        if match is None or match["col"].strip('()" \t') != column:
            return None
        n, op = int(match["n"]), match["op"]
        if op in (">=", ">"):
            low = max(low, n + 1 if op == ">" else n)
        else:
            high = min(high, n - 1 if op == "<" else n)
    return low, high


def _restricts_characters(body: str, column: str) -> bool:
    """False for a CHECK made only of character-length bounds (the candidates' length already
    satisfies those); True for anything else (patterns, octet_length, other functions)."""
    rest = _LENGTH_TEST.sub("", body)
    return bool(re.sub(r"(?i)\bAND\b|[()\s]", "", rest))


def _restricted(plan: Plan, constraints: UsernameConstraints) -> bool:
    """The policy's pattern or a CHECK restricts the characters of a name (not only its length):
    names reduced to [a-z0-9_] are candidates too."""
    return plan.settings.username.pattern is not None or any(
        _restricts_characters(body, constraints.column) for _, body in constraints.checks
    )


def _username_outer(
    plan: Plan,
    constraints: UsernameConstraints,
    *,
    forced: bool | sql.Composable,
    optimistic: bool = False,
    named: bool = False,
    collided: bool = False,
) -> tuple[sql.Composable, sql.Composable]:
    """(whether the plain name is free, over `b`; the final username, over `c`).

    Candidates, first acceptable wins (acceptable: passes the policy and the column's CHECKs, and
    no profile holds its key in any unique index on the column):
    1. the name as given: only when it may be given plainly (not reserved, vouched for or
       written by an operator) and no lower key in the same statement has the same unique key;
    2. the name + '_' + 8 hex digits of a hash of the whole key;
    3. when the table or the policy restricts characters: the name reduced to [a-z0-9_], plain
       (not on the forced retry: two rows of one statement may reduce to the same name) and
       suffixed;
    `optimistic` (the trigger's first try) neither compares the rows of one statement nor looks
    the plain name up: a name taken either way raises the unique violation that sends the
    signup to the forced retry, and the common signup starts no sort and no index probe.
    4. 'user' + the suffix, then with 16 hex digits (for columns so short that 8 collide);
    then NULL when the column allows it, else candidate 2 (the insert fails and is recorded).
    Suffixed names are looked up only on the forced retry (a hash of the key makes a taken one
    rare; the retry after the unique violation finds it): every lookup is one more subplan to
    start for each single-row sign-up. `forced` may be a boolean of the statement (a parameter):
    one statement then serves both tries. `collided`: the rows of the trigger's retry whose name
    was found taken (see `_retry`): the plain name is no candidate, the rest as forced.
    """
    n = _Names(plan, constraints, lean=optimistic or collided, named=named, probed=collided)
    base = sql.SQL("c.pg_base")
    plain = sql.SQL("c.pg_plain")
    any_base = n.suffixed_lengths(None)
    restricted = _restricted(plan, constraints)
    # The suffixed name is the only other candidate: the key is hashed right there.
    free_plain, given = n.given(base, plain, sql.SQL("c.pg_trusted"), sql.SQL("c.pg_key"))
    if optimistic and _hash_inline(plan, constraints):
        return free_plain, given
    slug = sql.SQL("nullif(btrim(regexp_replace({}, '[^a-z0-9_]+', '_', 'g'), '_'), '')").format(
        _lower(base, constraints)
    )
    steps: list[tuple[sql.Composable, sql.Composable]] = []
    partitions = [n.key(k, plain) for k in constraints.keys] or (
        [plain] if constraints.unique else []
    )
    windows = (
        [
            sql.SQL("row_number() over (partition by c.pg_free, {} order by c.pg_key) = 1").format(
                p
            )
            for p in partitions
        ]
        if not optimistic
        else []
    )
    first: sql.Composable = sql.SQL(" and ").join([sql.SQL("c.pg_free"), *windows])
    # Optimistic: the select below hashed the key only when the plain name is free (and it
    # looks nothing up); md5 is never NULL.
    free = sql.SQL("(b.pg_trusted and not {} and {} and not {})")
    if optimistic:
        first = sql.SQL("c.pg_hash is null")
    if not collided:
        steps.append((first, plain))

    def acceptable(
        candidate: sql.Composable, lengths: tuple[int, int] | None = None
    ) -> sql.Composable:
        if forced is False:
            return n.ok(candidate, lengths)
        if forced is True:
            return sql.SQL("{} and not {}").format(n.ok(candidate, lengths), n.taken(candidate))
        return sql.SQL("{} and (not {} or not {})").format(
            n.ok(candidate, lengths), forced, n.taken(candidate)
        )

    second = n.suffixed(base) if optimistic or collided else sql.SQL("c.pg_suffixed")
    steps.append((acceptable(second, any_base), second))
    if restricted:
        slug_plain = n.plain(slug)
        if forced is not True:
            steps.append(
                (
                    sql.SQL("{}c.pg_trusted and not {} and {} and not {}").format(
                        sql.SQL("") if forced is False else sql.SQL("not {} and ").format(forced),
                        n.reserved(slug_plain, ascii=True),
                        n.ok(slug_plain),
                        n.taken(slug_plain),
                    ),
                    slug_plain,
                )
            )
        slug_suffixed = n.suffixed(slug)
        steps.append(
            (
                sql.SQL("{} is not null and {}").format(slug, acceptable(slug_suffixed, any_base)),
                slug_suffixed,
            )
        )
    for digits in (SHORT_SUFFIX, LONG_SUFFIX):
        candidate = n.suffixed(USERNAME_FALLBACK, digits)
        steps.append(
            (acceptable(candidate, n.suffixed_lengths(USERNAME_FALLBACK, digits)), candidate)
        )
    last: sql.Composable = second if constraints.not_null else sql.NULL
    chain = sql.SQL(" ").join(
        sql.SQL("when {} then {}").format(cond, value) for cond, value in steps
    )
    final = sql.SQL("case when c.pg_base is null then null {} else {} end").format(chain, last)
    if optimistic:  # over the select that has the plain name as a column
        return free_plain, n.typed(final)
    plain_b = sql.SQL("b.pg_plain")
    return free.format(n.reserved(plain_b), n.ok(plain_b), n.taken(plain_b)), n.typed(final)


def _hash_inline(plan: Plan, constraints: UsernameConstraints) -> bool:
    """Whether the optimistic insert's one candidate after the plain name is the suffixed
    name, acceptable by its length alone: its outer select then hashes the key itself (one
    select fewer to set up per signup, and still one md5 per name not given plainly)."""
    n = _Names(plan, constraints, lean=True)
    second = n.ok(n.suffixed(sql.SQL("c.pg_base")), n.suffixed_lengths(None))
    return not _restricted(plan, constraints) and second == sql.SQL("true")


def insert_statement(
    plan: Plan,
    *,
    source: sql.Composable,
    where: sql.Composable = sql.SQL(""),
    force_suffix: bool | sql.Composable = False,
    optimistic: bool = False,
    named: bool = False,
    retry: bool = False,
    rule_only: bool = False,
) -> sql.Composed:
    """INSERT … SELECT … ON CONFLICT (key) DO NOTHING creating profiles for rows of `source`.

    `source` is the identity table or a transition table (aliased `u`); `where` filters it.
    `force_suffix` is the retry after a unique violation: suffixed names are looked up too, and
    names reduced to [a-z0-9_] are never given plainly (two may have collided in one statement).
    Nested selects: `a` reads the sources and then picks the raw username (`pg_raw`), `b` cleans
    it and says whether it may be given plainly, the next `b` cuts the plain name and hashes the
    key, `c` tests the plain name and makes the suffixed one, the outer one picks among the
    candidates. OFFSET 0 computes each once per row: without it the planner would copy their
    expressions into each use (and each candidate is a column, so the statement reads short).
    `optimistic` is the signup trigger's first try, shaped for what signups are (new users, one
    per statement): a plain INSERT (no ON CONFLICT: a speculative insertion per row costs a bulk
    insert a quarter of its time) that does not compare names within the statement (a sort per
    statement). A profile that exists or two equal names in one statement raise a unique
    violation, and the trigger's forced retry does both; its selects are `_optimistic_layers`.
    `force_suffix` may be a boolean of the statement (a parameter of the function holding it),
    `named` reads the mapping's constants from the installed functions (see `_constant`).
    `rule_only` (optimistic): only the rows whose name needs the username rule, those the lean
    insert leaves (see `lean_statement`).
    `retry` (with `optimistic`, for a username rule): the trigger's retry, see `_retry`; with
    `rule_only` too, over the rows the lean insert left, or all when RULE_NEEDED is ALL_ROWS.
    """
    settings = plan.settings
    constraints = plan.username_constraints
    inner_cols: list[sql.Composable] = [
        sql.SQL("u.{} as pg_key").format(sql.Identifier(settings.identity.key))
    ]
    raw_cols: list[sql.Composable] = [sql.SQL("a.*")]
    middle_cols: list[sql.Composable] = [sql.SQL("a.*")]
    free_cols: list[sql.Composable] = [sql.SQL("b.*")]
    outer_cols: list[sql.Composable] = [sql.SQL("c.pg_key")]
    targets = [sql.Identifier(settings.profile.key)]
    carried = [sql.Identifier("pg_key")]  # the columns every select passes up unchanged
    late = _late_columns(plan) if optimistic else False
    for index, (column, sources) in enumerate(plan.mapping.items()):
        targets.append(sql.Identifier(column))
        if constraints is not None and column == constraints.column:
            inner, raw, middle = _username_layers(
                plan, constraints, sources, optimistic=optimistic, named=named
            )
            inner_cols.extend(inner)
            raw_cols.extend(raw)
            middle_cols.extend(middle)
            _, final = _username_outer(
                plan, constraints, forced=force_suffix, optimistic=optimistic, named=named
            )
            outer_cols.append(final)
            continue
        outer_cols.append(
            _other_column(
                plan, column, sources, index, late=late, carried=carried, inner=inner_cols
            )
        )
    # (columns, alias) of each select, innermost first; OFFSET 0 keeps each one a select.
    layers: list[tuple[list[sql.Composable], str]] = [(inner_cols, "a")]
    if constraints is not None and constraints.column in plan.mapping and optimistic:
        layers += _optimistic_layers(
            plan, constraints, carried, raw_cols[1:], middle_cols[1:], named=named
        )
    elif constraints is not None and constraints.column in plan.mapping:
        names = _Names(plan, constraints, named=named)
        free, _ = _username_outer(plan, constraints, forced=force_suffix, named=named)
        plain_cols = [
            sql.SQL("b.*"),
            sql.SQL("{} as pg_plain").format(names.plain(sql.SQL("b.pg_base"))),
            sql.SQL("md5(b.pg_key::text) as pg_hash"),
        ]
        free_cols.append(sql.SQL("{} as pg_free").format(free))
        free_cols.append(
            sql.SQL("{} as pg_suffixed").format(
                names.suffixed(sql.SQL("b.pg_base"), hashed=sql.SQL("b.pg_hash"))
            )
        )
        layers += [(raw_cols, "a"), (middle_cols, "b"), (plain_cols, "b"), (free_cols, "c")]
    else:  # no username rule: each value is used once, so the planner may pull the select up
        layers = [(inner_cols, "c")]
    # Each select is a CTE referenced once: the planner inlines it as the subquery it would be
    # nested (the same plan), and the statement reads top to bottom instead of inside out.
    steps = ["pg_sources", "pg_chosen", "pg_cleaned", "pg_plain"]
    steps.append("pg_hashed" if optimistic else "pg_tested")
    offset = sql.SQL(" offset 0" if len(layers) > 1 else "")
    # The rows left to the rule are picked where the name is chosen, by the lean insert's test.
    filters: dict[str, sql.Composable] = {}
    if rule_only:
        if constraints is None or not optimistic or len(layers) < 2:
            raise ValueError("rule_only needs the optimistic insert of a username rule")
        name = _username_raw(plan, constraints, plan.mapping[constraints.column], named)
        test = sql.SQL(" where not {}").format(_lean_test(plan, name))
        if retry:  # all the rows once the flag says so: the retry of the lean insert
            test = sql.SQL(" where pg_catalog.current_setting({}, true) = {} or not {}").format(
                sql.Literal(RULE_NEEDED), sql.Literal(ALL_ROWS), _lean_test(plan, name)
            )
        filters["pg_chosen"] = test
    ctes: list[sql.Composable] = []
    below: sql.Composable = sql.SQL("{} u {}").format(source, where)
    for (columns, alias), step in zip(layers, steps, strict=False):
        ctes.append(
            sql.SQL("{} as (select {} from {}{}{})").format(
                sql.Identifier(step),
                sql.SQL(", ").join(columns),
                below,
                filters.get(step, sql.SQL("")),
                offset,
            )
        )
        below = sql.SQL("{} {}").format(sql.Identifier(step), sql.SQL(alias))
    if retry:
        if constraints is None or not optimistic or len(layers) < 2:
            raise ValueError("retry needs the optimistic insert of a username rule")
        return _retry(plan, constraints, ctes, below, targets, outer_cols, carried, named=named)
    return sql.SQL(
        "with {ctes}\ninsert into {profile} ({targets})\nselect {outer}\nfrom {below}{conflict}"
    ).format(
        profile=sql.Identifier(settings.profile.schema, settings.profile.name),
        targets=sql.SQL(", ").join(targets),
        outer=sql.SQL(", ").join(outer_cols),
        ctes=sql.SQL(",\n").join(ctes),
        below=below,
        conflict=sql.SQL("\non conflict ({}) do nothing").format(
            sql.Identifier(settings.profile.key)
        )
        if not optimistic
        else sql.SQL(""),
    )


# The transaction-local setting the lean insert turns on when a new row's name needs the
# username rule: the trigger then runs the full insert for those rows.
RULE_NEEDED = "profileguard.username_rule"
# Its value when the full insert is to take every new row (the retry after a unique violation).
ALL_ROWS = "all"


def _lean_test(plan: Plan, name: sql.Composable) -> sql.Composable:
    """The cheap test of the chosen, uncut name `name`: true when the username rule's result is
    known without its machinery (no name at all, or one that cleaning leaves as it is and that
    is not cut; a name that may be a JSON array or object printed as text is not, see
    PLAIN_NAME). What is a name at all is the sources' columns' own test, the same for both
    inserts (`_username_layers`)."""
    constraints = plan.username_constraints
    assert constraints is not None
    n = _Names(plan, constraints, lean=True)
    return sql.SQL(
        "({name} is null or ({name} ~ {clean} and octet_length({name}) <= {max}))"
    ).format(name=name, clean=sql.Literal(PLAIN_NAME), max=sql.Literal(n.max))


def lean_statement(
    plan: Plan, *, source: sql.Composable, named: bool = False
) -> sql.Composed | None:
    """The sign-up trigger's common insert: the rows whose name passes `_lean_test`, in one
    select over the sources, with the username rule's result for such a name (the plain name
    or the suffixed one, as `_Names.given` decides) and none of the cleaning. Every other row
    turns RULE_NEEDED on (its WHERE, only for those rows) and is left to the full optimistic
    insert (`insert_statement(rule_only=True)`): a sign-up sets up only the statement it needs.
    None when the rule has other candidates than the suffixed name (`_hash_inline`)."""
    settings = plan.settings
    constraints = plan.username_constraints
    if (
        constraints is None
        or constraints.column not in plan.mapping
        or not _hash_inline(plan, constraints)
    ):
        return None
    n = _Names(plan, constraints, lean=True, named=named)
    inner_cols: list[sql.Composable] = [
        sql.SQL("u.{} as pg_key").format(sql.Identifier(settings.identity.key))
    ]
    outer_cols: list[sql.Composable] = [sql.SQL("a.pg_key")]
    targets = [sql.Identifier(settings.profile.key)]
    carried = [sql.Identifier("pg_key")]
    late = _late_columns(plan)
    test: sql.Composable = sql.SQL("true")
    for index, (column, sources) in enumerate(plan.mapping.items()):
        targets.append(sql.Identifier(column))
        if column != constraints.column:
            outer_cols.append(
                _other_column(
                    plan,
                    column,
                    sources,
                    index,
                    late=late,
                    carried=carried,
                    inner=inner_cols,
                    alias_of_below="a",
                )
            )
            continue
        inner, _, _ = _username_layers(plan, constraints, sources, optimistic=True, named=named)
        inner_cols.extend(inner)
        name = _username_raw(plan, constraints, sources, named)
        base = _lower(name, constraints) if settings.username.lowercase else name
        if constraints.not_null:
            base = sql.SQL("coalesce({}, {})").format(base, sql.Literal(USERNAME_FALLBACK))
        trusted = _trusted(plan, constraints, sources, named)
        # The name is not cut and cleaning leaves it as it is: it is its own plain name.
        _, final = n.given(base, base, trusted, sql.SQL("a.pg_key"), ascii=True)
        outer_cols.append(final)
        test = _lean_test(plan, name)
    return sql.SQL(
        "with pg_sources as (select {inner} from {source} u offset 0)\n"
        "insert into {profile} ({targets})\nselect {outer}\nfrom pg_sources a\n"
        "where {test} or pg_catalog.set_config({flag}, 'on', true) is null"
    ).format(
        inner=sql.SQL(", ").join(inner_cols),
        source=source,
        profile=sql.Identifier(settings.profile.schema, settings.profile.name),
        targets=sql.SQL(", ").join(targets),
        outer=sql.SQL(", ").join(outer_cols),
        test=test,
        flag=sql.Literal(RULE_NEEDED),
    )


def _other_column(
    plan: Plan,
    column: str,
    sources: tuple[Source, ...],
    index: int,
    *,
    late: bool,
    carried: list[sql.Identifier],
    inner: list[sql.Composable],
    alias_of_below: str = "c",
) -> sql.Composable:
    """The outer select's value of a mapped column other than the username; what it reads is
    added to the innermost select's columns (`inner`) and to those passed up (`carried`), and
    read from the select below by its alias `alias_of_below`."""
    target = plan.profile.columns[column]
    alias = sql.Identifier(f"pg_c{index}")
    if late:
        for name in dict.fromkeys(source.column for source in sources):
            if sql.Identifier(name) not in carried:
                carried.append(sql.Identifier(name))
                inner.append(sql.SQL("u.{}").format(sql.Identifier(name)))
        value = cast(coalesced_as(sources, alias_of_below), target)
    else:
        carried.append(alias)
        inner.append(sql.SQL("{} as {}").format(coalesced(sources), alias))
        value = cast(sql.SQL("{}.{}").format(sql.SQL(alias_of_below), alias), target)
    if target.not_null and target.default_expr:
        # An explicit NULL would not take the default: the column's default fills the gap.
        value = sql.SQL("coalesce({}, {})").format(value, sql.SQL(target.default_expr))
    return value


def _late_columns(plan: Plan) -> bool:
    """Whether the optimistic insert computes the columns other than the username in its outer
    select, from the identity columns they read passed up as they are (one jsonb for the
    default mapping's two columns): not when one is named like the selects' own columns."""
    constraints = plan.username_constraints
    return (
        constraints is not None
        and constraints.column in plan.mapping
        and not any(
            source.column.startswith("pg_")
            for column, sources in plan.mapping.items()
            if column != constraints.column
            for source in sources
        )
    )


def _optimistic_layers(
    plan: Plan,
    constraints: UsernameConstraints,
    carried: list[sql.Identifier],
    raw: list[sql.Composable],
    middle: list[sql.Composable],
    *,
    named: bool = False,
) -> list[tuple[list[sql.Composable], str]]:
    """The selects of the optimistic insert above the sources. Every signup sets its statement
    up anew (each expression, and each column of each select: its type looked up, a slot made),
    so it is laid out for that, with the same result: `a` reads the sources (the other columns'
    identity columns as they are, see `_late_columns`), the next `a` cuts the chosen name
    (`pg_cut`) and decides `pg_trusted`, `b` cleans it, `c` gives the plain name a column, the
    next `c` hashes the key only when the plain name is not free (`pg_hash` NULL says it is;
    left out when the outer select can hash it, see `_hash_inline`), and each select passes up
    only the columns used above it."""
    names = _Names(plan, constraints, lean=True, named=named)
    free, _ = _username_outer(plan, constraints, forced=False, optimistic=True, named=named)

    def passed(alias: str, *extra: str) -> list[sql.Composable]:
        idents = [*carried, *(sql.Identifier(name) for name in extra)]
        return [sql.SQL("{}.{}").format(sql.SQL(alias), ident) for ident in idents]

    layers: list[tuple[list[sql.Composable], str]] = [
        ([*passed("a"), *raw], "a"),
        ([*passed("a", "pg_trusted"), *middle], "b"),
        (
            [
                sql.SQL("b.*"),
                sql.SQL("{} as pg_plain").format(names.plain(sql.SQL("b.pg_base"), column=True)),
            ],
            "c",
        ),
    ]
    if _hash_inline(plan, constraints):
        return layers
    return [
        *layers,
        # The key is hashed only for the names not given plainly: md5 costs a bulk insert of
        # plain names more than the select that decides it. The plain slug's test (a table
        # that restricts characters) reads pg_trusted.
        (
            [
                *passed(
                    "c",
                    "pg_base",
                    "pg_plain",
                    *(["pg_trusted"] if _restricted(plan, constraints) else []),
                ),
                sql.SQL("case when {} then null else md5(c.pg_key::text) end as pg_hash").format(
                    free
                ),
            ],
            "c",
        ),
    ]


def _retry(
    plan: Plan,
    constraints: UsernameConstraints,
    ctes: list[sql.Composable],
    below: sql.Composable,
    targets: list[sql.Identifier],
    outer_cols: list[sql.Composable],
    carried: list[sql.Identifier],
    *,
    named: bool = False,
) -> sql.Composed:
    """The signup trigger's retry after a unique violation, one statement over the optimistic
    insert's selects (`ctes`, the last one `below`): `pg_first` inserts each row as the first try
    would, ON CONFLICT DO NOTHING (every unique index an arbiter), so that a row whose key or
    name a profile holds, or a row of the statement inserted before it, is left out; the outer
    insert takes only the rows it left out and gives them the collision path's candidates (the
    plain name is taken: `_username_outer`, collided), each looked up. A bulk insert whose names
    collide pays for the collision path only in its colliding rows, and names each row once
    (`below` is read twice: the planner materializes it). The rows are read in key order (the
    caller's `where`), so that the lowest key of a name keeps it plainly, as in the full
    statement; a profile made first by another trigger or the app is left as it is."""
    settings = plan.settings
    profile = sql.Identifier(settings.profile.schema, settings.profile.name)
    key = sql.Identifier(settings.profile.key)
    _, final = _username_outer(
        plan, constraints, forced=True, optimistic=False, named=named, collided=True
    )
    username = targets.index(sql.Identifier(constraints.column))
    rest_cols = [*outer_cols[:username], final, *outer_cols[username + 1 :]]
    passed = [sql.SQL("c.{}").format(ident) for ident in carried]
    return sql.SQL(
        "with {ctes},\n"
        "pg_first as (insert into {profile} ({targets}) select {outer} from {below}"
        " on conflict do nothing returning {key}),\n"
        "pg_collided as (select {passed}, c.pg_base, md5(c.pg_key::text) as pg_hash"
        " from {below} where c.pg_key not in (select f.{key} from pg_first f) offset 0)\n"
        "insert into {profile} ({targets})\nselect {rest}\nfrom pg_collided c\n"
        "on conflict ({key}) do nothing"
    ).format(
        ctes=sql.SQL(",\n").join(ctes),
        profile=profile,
        targets=sql.SQL(", ").join(targets),
        outer=sql.SQL(", ").join(outer_cols),
        below=below,
        key=key,
        passed=sql.SQL(", ").join(passed),
        rest=sql.SQL(", ").join(rest_cols),
    )
