"""Resolve free-text Chinese addresses to administrative units (province → township), offline.

The matcher is built once from a table of units and then answers many addresses. All names
and aliases are compiled into one regex alternation sorted longest first, so finding the next
leftmost-longest name is done by ``re`` in C; Python only runs at the few positions where a
name matches (and falls back to shorter names from a first-character table when the longest
one is rejected). About 25-45 µs per address for the 198 Xuzhou units.

Matching rules
--------------
1. The text is normalised: NFKC (full-width letters, digits, spaces and punctuation become
   half-width) and every whitespace or zero-width character is removed.
2. Scanning goes left to right; at each position the longest name wins. Official names are
   accepted anywhere; an alias (an official name with one suffix such as 省/市/区/县/镇/街道
   stripped, or an explicit alias in the table) only as the first unit found or directly after
   the previous unit (punctuation in between is allowed), and never when the next character
   is one of 路街巷道村桥 — ``铜山路`` is a road, not 铜山区.
3. A name is accepted only when it names a unit strictly *below* the deepest unit accepted so
   far (a repeat of that unit or one of its ancestors is skipped). With no unit accepted yet,
   it must be unique in the index. When several units remain, official names beat aliases
   and then the shallowest level wins; if several still remain the result stops at their
   deepest common ancestor, lists them as candidates and scanning ends.
4. A name that contradicts the units already accepted (e.g. a township of another county)
   ends the scan; the result keeps the consistent units, lists the contradicting ones as
   candidates and loses confidence.
5. Scanning ends at a township; the rest of the text is the ``remainder``.

Confidence
----------
Starting at 1.0, subtract

* 0.05 if the province of the chain was not named (addresses routinely omit it),
* 0.10 for each other unit of the chain from the root down to the result that was not named
  (a skipped city/county, or a common ancestor reached through ambiguity),
* 0.05 for each unit matched through an alias instead of its official name,
* 0.20 if the address was ambiguous,
* 0.25 if the address named a unit contradicting the others,

then clip to [0.05, 1.0]. So ``江苏省徐州市铜山区柳新镇`` scores 1.0, ``徐州市铜山区柳新镇`` 0.95,
``柳新镇`` alone 0.75 and ``柳新`` alone 0.70. A result of precision ``none`` has confidence 0.

Empty input (or input that is only whitespace) raises `AddressError`; text in which no unit is
recognised returns a result of precision ``none``, so bulk runs need no per-row try/except.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from geo.geocoding.result import (
    LEVELS,
    AddressError,
    AdminLevel,
    Candidate,
    GeocodeResult,
    Precision,
    empty_codes,
)

__all__ = [
    "ALIAS_SUFFIXES",
    "AdminIndex",
    "AdminTableError",
    "AdminUnit",
    "normalise_address",
]

#: Suffixes stripped from official names to make aliases, longest first so that 自治县 is
#: stripped before 县 and 街道办事处 before 街道.
ALIAS_SUFFIXES: tuple[str, ...] = (
    "街道办事处",
    "自治县",
    "开发区",
    "街道",
    "省",
    "市",
    "区",
    "县",
    "镇",
    "乡",
)
_MIN_ALIAS_CHARS = 2
# Remainders so generic that as an alias they would fire on ordinary words (经济开发区 → 经济).
_GENERIC_ALIASES = frozenset({"经济", "高新", "工业", "开发", "新区", "城区", "市区", "郊区"})
# An alias directly followed by one of these is the start of a road/village/bridge name.
_ALIAS_BLOCKERS = frozenset("路街巷道村桥")
_INVISIBLE = re.compile(r"[\s\u200b\u200c\u200d\u2060\ufeff]+")

_PENALTY_PROVINCE_SKIPPED = 0.05
_PENALTY_LEVEL_SKIPPED = 0.10
_PENALTY_ALIAS = 0.05
_PENALTY_AMBIGUOUS = 0.20
_PENALTY_CONFLICT = 0.25
_MIN_CONFIDENCE = 0.05
_PRECISION_OF_LEVEL = {level: Precision.of_level(level) for level in LEVELS}


class AdminTableError(ValueError):
    """A record of the administrative table is invalid (the message names field and value)."""


@dataclass(frozen=True, slots=True)
class AdminUnit:
    """One administrative unit of the table."""

    code: str
    name: str
    level: AdminLevel
    parent_code: str | None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Entry:
    unit: AdminUnit
    alias: bool
    depth: int
    within: frozenset[str]  # codes of the unit and all its ancestors


@dataclass(frozen=True, slots=True)
class _Hit:
    unit: AdminUnit
    surface: str
    end: int
    alias: bool


def normalise_address(text: str) -> str:
    """Normalise an address for matching.

    Parameters
    ----------
    text
        Free text.

    Returns
    -------
    str
        NFKC-normalised text (full-width ASCII, digits, spaces and punctuation made half-width)
        with all whitespace and zero-width characters removed.

    Raises
    ------
    AddressError
        If `text` is not a string.
    """
    if not isinstance(text, str):
        raise AddressError(f"address must be a str, got {type(text).__name__}: {text!r}")
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


def _is_punctuation(text: str) -> bool:
    return all(unicodedata.category(ch).startswith("P") for ch in text)


def _generated_aliases(name: str) -> tuple[str, ...]:
    for suffix in ALIAS_SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if len(stem) >= _MIN_ALIAS_CHARS and stem not in _GENERIC_ALIASES:
                return (stem,)
            return ()
    return ()


def _parse_aliases(value: Any, code: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts: Iterable[Any] = re.split(r"[|;,，；、]", value)
    elif isinstance(value, Iterable):
        parts = value
    else:
        raise AdminTableError(
            f"aliases of unit {code!r} must be a str separated by '|' or a list of str, "
            f"got {value!r}"
        )
    out = []
    for part in parts:
        if not isinstance(part, str):
            raise AdminTableError(f"alias of unit {code!r} must be a str, got {part!r}")
        alias = normalise_address(part)
        if alias:
            out.append(alias)
    return tuple(out)


def _unit_from_record(record: Mapping[str, Any], row: int) -> AdminUnit:
    for key in ("code", "name", "level"):
        if key not in record or record[key] is None or str(record[key]).strip() == "":
            raise AdminTableError(f"record {row}: field {key!r} is missing or empty: {record!r}")
    code = str(record["code"]).strip()
    name = normalise_address(str(record["name"]))
    raw_level = str(record["level"]).strip()
    try:
        level = AdminLevel(raw_level)
    except ValueError:
        allowed = ", ".join(lv.value for lv in LEVELS)
        raise AdminTableError(
            f"record {row} (code {code!r}): field 'level' is {raw_level!r}; allowed: {allowed}"
        ) from None
    parent = record.get("parent_code")
    parent_code = None if parent is None or str(parent).strip() == "" else str(parent).strip()
    return AdminUnit(code, name, level, parent_code, _parse_aliases(record.get("aliases"), code))


class AdminIndex:
    """An in-memory index of administrative units for address matching.

    Build it with `AdminIndex.from_records`; it is immutable and safe to share between threads.
    """

    def __init__(self, units: Iterable[AdminUnit]) -> None:
        self._units: dict[str, AdminUnit] = {}
        for unit in units:
            if unit.code in self._units:
                raise AdminTableError(f"field 'code' is duplicated: {unit.code!r}")
            self._units[unit.code] = unit
        self._chains: dict[str, tuple[AdminUnit, ...]] = {}
        for unit in self._units.values():
            self._check_parent(unit)
        for code in self._units:
            self._chains[code] = self._build_chain(code)
        self._chain_codes = {c: frozenset(u.code for u in ch) for c, ch in self._chains.items()}
        self._names: dict[str, list[_Entry]] = {}
        for unit in self._units.values():
            self._add_name(unit.name, unit.code, alias=False)
            for alias in (*_generated_aliases(unit.name), *unit.aliases):
                self._add_name(alias, unit.code, alias=True)
        by_first: dict[str, list[str]] = {}
        for surface in self._names:
            by_first.setdefault(surface[0], []).append(surface)
        # Longest first: the first surface that fits at a position is the longest match.
        self._by_first = {ch: tuple(sorted(s, key=len, reverse=True)) for ch, s in by_first.items()}
        # One alternation of every surface, longest first, finds the next leftmost-longest name
        # at C speed; Python only looks at positions where a name actually matches. Shorter
        # names at the same position come from _by_first, for when the longest is rejected.
        self._pattern = _longest_first_pattern(self._names)
        self._codes = {code: self._codes_from_chain(code) for code in self._units}
        self._skip_penalties = {
            code: tuple(
                (
                    link.code,
                    _PENALTY_PROVINCE_SKIPPED
                    if link.level is AdminLevel.PROVINCE
                    else _PENALTY_LEVEL_SKIPPED,
                )
                for link in chain
            )
            for code, chain in self._chains.items()
        }

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> AdminIndex:
        """Build an index from a table of units.

        Parameters
        ----------
        records
            Mappings with keys ``code``, ``name``, ``level`` (one of ``province``, ``city``,
            ``county``, ``township``), ``parent_code`` (None or empty for a root) and optionally
            ``aliases`` (a list of str, or one str separated by ``|``). A unit's parent must be
            in the table and at a shallower level; a city may hang directly under nothing (a
            city-only table) and a township directly under a city (no county).

        Returns
        -------
        AdminIndex

        Raises
        ------
        AdminTableError
            On a missing field, an unknown level, a duplicate code, a parent that is absent or
            not shallower than its child.
        """
        return cls(_unit_from_record(rec, i) for i, rec in enumerate(records))

    # -- construction helpers -------------------------------------------------------------

    def _check_parent(self, unit: AdminUnit) -> None:
        if unit.parent_code is None:
            return
        parent = self._units.get(unit.parent_code)
        if parent is None:
            raise AdminTableError(
                f"unit {unit.code!r} ({unit.name}): field 'parent_code' is "
                f"{unit.parent_code!r}, which is not a code in the table"
            )
        if parent.level.depth >= unit.level.depth:
            raise AdminTableError(
                f"unit {unit.code!r} ({unit.name}, {unit.level.value}): its parent "
                f"{parent.code!r} is at level {parent.level.value!r}; a parent must be shallower"
            )

    def _build_chain(self, code: str) -> tuple[AdminUnit, ...]:
        chain = []
        unit: AdminUnit | None = self._units[code]
        while unit is not None:
            chain.append(unit)
            unit = self._units.get(unit.parent_code) if unit.parent_code else None
        return tuple(reversed(chain))

    def _add_name(self, surface: str, code: str, *, alias: bool) -> None:
        entries = self._names.setdefault(surface, [])
        if any(e.unit.code == code for e in entries):
            return
        unit = self._units[code]
        entries.append(_Entry(unit, alias, unit.level.depth, self._chain_codes[code]))

    # -- lookups ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, code: object) -> bool:
        return code in self._units

    def unit(self, code: str) -> AdminUnit:
        """The unit with `code`.

        Raises
        ------
        KeyError
            If `code` is not in the index.
        """
        return self._units[code]

    def chain(self, code: str) -> tuple[AdminUnit, ...]:
        """The unit with `code` and its ancestors, root first."""
        return self._chains[code]

    def is_within(self, code: str, ancestor_code: str) -> bool:
        """True if unit `code` is `ancestor_code` or one of its descendants (False if unknown)."""
        chain = self._chain_codes.get(code)
        return chain is not None and ancestor_code in chain

    def codes_of(self, code: str) -> dict[str, str | None]:
        """Code per level (keys ``province`` … ``township``) for unit `code` and its ancestors."""
        return dict(self._codes[code])

    def _codes_from_chain(self, code: str) -> dict[str, str | None]:
        codes = empty_codes()
        for unit in self._chains[code]:
            codes[unit.level.value] = unit.code
        return codes

    # -- matching --------------------------------------------------------------------------

    def resolve(self, address: str) -> GeocodeResult:
        """Resolve `address` to the deepest administrative unit it names consistently.

        Parameters
        ----------
        address
            Free text, e.g. ``'江苏省徐州市铜山区柳新镇某某村东200米'``.

        Returns
        -------
        GeocodeResult
            Precision ``province`` … ``township`` (or ``none`` if nothing was recognised), the
            codes per level, the confidence (formula in the module docstring), the matched
            substrings and the unmatched ``remainder``. lon/lat are None.

        Raises
        ------
        AddressError
            If `address` is not a string or is empty after normalisation.
        """
        text = normalise_address(address)
        if not text:
            raise AddressError(f"address is empty after removing whitespace: {address!r}")
        return self._scan(address, text)

    def _scan(self, address: str, text: str) -> GeocodeResult:
        hits: list[_Hit] = []
        current: AdminUnit | None = None
        last_end = 0
        stop_at: int | None = None
        ambiguous: list[AdminUnit] = []
        ambiguous_surface = ""
        conflicting: list[AdminUnit] = []
        notes: list[str] = []
        pos, n = 0, len(text)
        while pos < n:
            found = self._pattern.search(text, pos)
            if found is None:
                break
            pos = found.start()
            adjacent = not hits or pos == last_end or _is_punctuation(text[last_end:pos])
            advanced = False
            first_conflict: tuple[str, list[AdminUnit]] | None = None
            for surface in self._surfaces_at(text, pos, found.group()):
                end = pos + len(surface)
                entries = self._usable_entries(surface, text, end, adjacent)
                if not entries:
                    continue
                outcome, chosen = self._classify(entries, current)
                units = [e.unit for e in chosen]
                if outcome == "accept":
                    hits.append(_Hit(chosen[0].unit, surface, end, chosen[0].alias))
                    current, last_end = chosen[0].unit, end
                elif outcome == "repeat":
                    last_end = end
                elif outcome == "ambiguous":
                    ambiguous, ambiguous_surface, stop_at = units, surface, end
                    notes.append(
                        f"{surface!r} names {len(units)} units: "
                        + ", ".join(f"{u.name} ({u.code})" for u in units)
                    )
                else:
                    if first_conflict is None:
                        first_conflict = (surface, units)
                    continue
                pos, advanced = end, True
                break
            if stop_at is not None:
                last_end = stop_at
                break
            if not advanced and first_conflict is not None:
                surface, units = first_conflict
                conflicting = units
                notes.append(
                    f"{surface!r} names "
                    + ", ".join(f"{u.name} ({u.code})" for u in units)
                    + (f", which is not within {current.name} ({current.code})" if current else "")
                    + "; stopped there"
                )
                break
            if not advanced:
                pos += 1
            elif current is not None and current.level is AdminLevel.TOWNSHIP:
                break
        matched = tuple(h.surface for h in hits)
        if ambiguous:
            common = self._common_ancestor(ambiguous)
            matched += (ambiguous_surface,)
            if common is not None:
                current = common
        if current is None:
            return GeocodeResult(
                address=address,
                code=None,
                level=None,
                codes=empty_codes(),
                precision=Precision.NONE,
                confidence=0.0,
                matched=matched,
                remainder=text,
                candidates=tuple(_candidate(u) for u in ambiguous + conflicting),
                notes=(*notes, "no administrative unit recognised"),
            )
        confidence = self._confidence(current, hits, bool(ambiguous), bool(conflicting))
        remainder = _strip_leading_punctuation(text[last_end:])
        return GeocodeResult(
            address=address,
            code=current.code,
            level=current.level,
            codes=self.codes_of(current.code),
            precision=_PRECISION_OF_LEVEL[current.level],
            confidence=confidence,
            matched=matched,
            remainder=remainder,
            candidates=tuple(_candidate(u) for u in ambiguous + conflicting),
            notes=tuple(notes),
        )

    def _surfaces_at(self, text: str, pos: int, longest: str) -> Iterator[str]:
        yield longest
        for surface in self._by_first[longest[0]]:
            if len(surface) < len(longest) and text.startswith(surface, pos):
                yield surface

    def _usable_entries(self, surface: str, text: str, end: int, adjacent: bool) -> list[_Entry]:
        entries = self._names[surface]
        if adjacent and not (end < len(text) and text[end] in _ALIAS_BLOCKERS):
            return entries
        return [e for e in entries if not e.alias]

    def _classify(
        self, entries: list[_Entry], current: AdminUnit | None
    ) -> tuple[str, list[_Entry]]:
        """Decide what a name found in the text means, given the deepest unit so far."""
        if current is None:
            below = entries
        else:
            below = [e for e in entries if e.unit is not current and current.code in e.within]
        if below:
            pool = [e for e in below if not e.alias] or below
            top = min(e.depth for e in pool)
            best = [e for e in pool if e.depth == top]
            return ("accept", best) if len(best) == 1 else ("ambiguous", best)
        if current is not None:
            chain = self._chain_codes[current.code]
            if any(e.unit.code in chain for e in entries):
                return "repeat", []
        return "conflict", entries

    def _common_ancestor(self, units: list[AdminUnit]) -> AdminUnit | None:
        chains = [self._chains[u.code] for u in units]
        common: AdminUnit | None = None
        for level_units in zip(*chains, strict=False):
            if all(u.code == level_units[0].code for u in level_units):
                common = level_units[0]
            else:
                break
        return common

    def _confidence(
        self, unit: AdminUnit, hits: list[_Hit], ambiguous: bool, conflict: bool
    ) -> float:
        named = {h.unit.code for h in hits}
        score = 1.0
        for code, penalty in self._skip_penalties[unit.code]:
            if code not in named:
                score -= penalty
        score -= _PENALTY_ALIAS * sum(h.alias for h in hits)
        if ambiguous:
            score -= _PENALTY_AMBIGUOUS
        if conflict:
            score -= _PENALTY_CONFLICT
        return round(min(1.0, max(_MIN_CONFIDENCE, score)), 3)


def _longest_first_pattern(surfaces: Iterable[str]) -> re.Pattern[str]:
    """A regex matching any of `surfaces`, preferring the longest at each position.

    Python's re tries alternatives in order, so ordering them by decreasing length makes the
    match at the leftmost position also the longest there. Grouping them by first character
    (``徐(?:州市|州)|铜(?:山区|山)``) means a failing position costs one comparison per group
    rather than one per name. Never matches if `surfaces` is empty.
    """
    groups: dict[str, list[str]] = {}
    for surface in surfaces:
        groups.setdefault(surface[0], []).append(surface[1:])
    if not groups:
        return re.compile(r"(?!)")
    parts = []
    for first, rests in sorted(groups.items()):
        ordered = sorted(rests, key=len, reverse=True)
        parts.append(re.escape(first) + "(?:" + "|".join(re.escape(r) for r in ordered) + ")")
    return re.compile("|".join(parts))


def _candidate(unit: AdminUnit) -> Candidate:
    return Candidate(unit.code, unit.name, unit.level.value)


def _strip_leading_punctuation(text: str) -> str:
    start = 0
    while start < len(text) and unicodedata.category(text[start]).startswith("P"):
        start += 1
    return text[start:]
