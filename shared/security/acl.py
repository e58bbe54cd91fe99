"""Where an ACL is decided (SPEC §5).

An entry is a username, ``*`` (any authenticated caller) or a prefix pattern ending in ``*``.
A key's own ACL governs it; a key without one is governed by its nearest ancestor namespace that has
one, looked up at every check; with neither, only its creator and the admins may touch it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from shared.validation import namespaces_of

Action = Literal["read", "write"]


@dataclass(frozen=True)
class Acl:
    """A read list and a write list; ``write`` does not imply ``read``."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    @classmethod
    def from_lists(cls, read: Iterable[str] | None, write: Iterable[str] | None) -> Acl:
        return cls(tuple(read or ()), tuple(write or ()))

    @classmethod
    def from_columns(cls, read: Iterable[str] | None, write: Iterable[str] | None) -> Acl | None:
        """A key's ACL as stored (two nullable columns, or two fields of a cached or relayed copy):
        None when both are absent, the key has no ACL of its own."""
        return None if read is None and write is None else cls.from_lists(read, write)

    def as_json(self) -> dict[str, list[str]]:
        return {"read": list(self.read), "write": list(self.write)}

    def allows(self, username: str, action: Action) -> bool:
        return entries_match(self.read if action == "read" else self.write, username)


def entry_matches(entry: str, username: str) -> bool:
    """Does one ACL entry admit ``username``?"""
    if entry == "*":
        return True
    if entry.endswith("*"):
        return username.startswith(entry[:-1])
    return entry == username


def entries_match(entries: Sequence[str], username: str) -> bool:
    return any(entry_matches(entry, username) for entry in entries)


def governing_namespace(key: str, namespace_acls: Mapping[str, Acl]) -> tuple[str, Acl] | None:
    """The nearest ancestor namespace of ``key`` that has an ACL, with that ACL."""
    for namespace in namespaces_of(key):
        acl = namespace_acls.get(namespace)
        if acl is not None:
            return namespace, acl
    return None


@dataclass(frozen=True)
class Principal:
    """The verified caller."""

    username: str
    is_admin: bool


@dataclass(frozen=True)
class Audience:
    """Who (admins aside) may do one action on a key: the entries of the ACL that governs it, or, for
    a key no ACL governs, its creator alone (matched exactly: a username may contain ``*``)."""

    entries: tuple[str, ...] = ()
    owner: str | None = None

    def admits(self, username: str) -> bool:
        return username == self.owner if self.owner is not None else entries_match(self.entries, username)


def audience(
    action: Action, *, key: str, key_acl: Acl | None, creator: str, namespace_acls: Mapping[str, Acl]
) -> Audience:
    """The key's own ACL, else its nearest namespace ACL, else its creator: the one rule of SPEC §5."""
    if key_acl is not None:
        return Audience(key_acl.read if action == "read" else key_acl.write)
    governing = governing_namespace(key, namespace_acls)
    if governing is not None:
        acl = governing[1]
        return Audience(acl.read if action == "read" else acl.write)
    return Audience(owner=creator)


def may_access(
    who: Principal,
    action: Action,
    *,
    key: str,
    key_acl: Acl | None,
    creator: str,
    namespace_acls: Mapping[str, Acl],
) -> bool:
    """May ``who`` read or write the existing key ``key``?"""
    if who.is_admin:
        return True
    rule = audience(action, key=key, key_acl=key_acl, creator=creator, namespace_acls=namespace_acls)
    return rule.admits(who.username)


def may_create(who: Principal, *, key: str, namespace_acls: Mapping[str, Acl]) -> bool:
    """Creating a key takes admin, or ``write`` on the governing namespace ACL."""
    if who.is_admin:
        return True
    governing = governing_namespace(key, namespace_acls)
    return governing is not None and governing[1].allows(who.username, "write")
