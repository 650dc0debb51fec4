"""Users, consent grants and the access log's entries: ``<state_dir>/api.sqlite``, or the
``api_*`` tables of the ledger's PostgreSQL database when ``VITALCHAIN_LEDGER_URL`` is set (so
API replicas on several hosts share users and grants; :func:`api_target`).

A separate file from the ledger because this one *is* mutable (grants are revoked, users
disabled) and holds identities an auditor's copy of the ledger should not carry.  The access
entries stored here are not trusted by themselves: each one's leaf hash is sealed into the
ledger's window log (:mod:`vitalchain.api.accesslog`), so editing a row here is detected by its proof.

Tokens: ``vct_<id>_<secret>``; only ``BLAKE3(secret)`` is stored, looked up by the public id and
compared in constant time, so neither a stolen database nor response timing reveals a token.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blake3 import blake3

from vitalchain.core.ids import check_id, check_role, check_user
from vitalchain.core.timeutil import iso_from_us, now_us
from vitalchain.errors import InvalidInput
from vitalchain.storage.sqldb import LOCK_API, SqlDb, connect, install_pg_schema, pg_ddl

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_users (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    token_id    TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL,
    created_us  INTEGER NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS api_grants (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id  TEXT NOT NULL,
    clinician   TEXT NOT NULL REFERENCES api_users(name),
    granted_us  INTEGER NOT NULL,
    until_us    INTEGER NOT NULL,
    granted_by  TEXT NOT NULL,
    revoked_us  INTEGER,
    revoked_by  TEXT
);
CREATE INDEX IF NOT EXISTS api_grants_pc ON api_grants (patient_id, clinician);
CREATE INDEX IF NOT EXISTS api_grants_c ON api_grants (clinician);
CREATE TABLE IF NOT EXISTS api_access (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_us       INTEGER NOT NULL,
    entry       TEXT NOT NULL,
    leaf_hash   BLOB NOT NULL,
    "user"      TEXT,
    patient_id  TEXT,
    allowed     INTEGER NOT NULL,
    window_id   TEXT
);
CREATE INDEX IF NOT EXISTS api_access_unsealed ON api_access (window_id, seq);
"""

TOKEN_PREFIX = "vct"


def _hash_secret(secret: str) -> str:
    return blake3(secret.encode()).hexdigest()


class StoreError(InvalidInput):
    """A user or grant operation was refused; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_us: int
    disabled: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "created_us": self.created_us,
                "disabled": self.disabled}


@dataclass(frozen=True)
class Grant:
    id: int
    patient_id: str
    clinician: str
    granted_us: int
    until_us: int
    granted_by: str
    revoked_us: int | None
    revoked_by: str | None

    def active(self, at_us: int) -> bool:
        return self.revoked_us is None and at_us < self.until_us

    def to_dict(self, at_us: int | None = None) -> dict[str, Any]:
        at = now_us() if at_us is None else at_us
        return {"id": self.id, "patient_id": self.patient_id, "clinician": self.clinician,
                "granted": iso_from_us(self.granted_us), "until": iso_from_us(self.until_us),
                "granted_by": self.granted_by,
                "revoked": iso_from_us(self.revoked_us) if self.revoked_us else None,
                "revoked_by": self.revoked_by, "active": self.active(at)}


@dataclass(frozen=True)
class AccessRow:
    seq: int
    entry: dict[str, Any]
    leaf_hash: bytes
    window_id: str | None



def _equal_to(**filters: Any) -> tuple[list[str], list[Any]]:
    """SQL equality clauses (and their bound values) for the filters that are given."""
    given = {column: value for column, value in filters.items() if value is not None}
    return [f'"{column}"=?' for column in given], list(given.values())

class ApiStore:
    """The API's store (SQLite file or PostgreSQL URL); one connection shared by threads under a lock."""

    def __init__(self, target: str | Path) -> None:
        self._db: SqlDb = connect(target)
        self.target = target
        self._lock = self._db.lock
        if self._db.is_postgres:
            install_pg_schema(self._db, "api_access",
                              [pg_ddl(st) for st in SCHEMA.split(";\n") if st.strip()])
        else:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.raw.executescript(SCHEMA)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._db.close()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.all(sql, args)

    def _write(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; returns the rows it changed."""
        with self._lock:
            return int(self._db.execute(sql, args).rowcount)

    # --- users ----------------------------------------------------------------------------
    def add_user(self, name: str, role: str) -> str:
        """Create a user and return its bearer token (shown once, stored only as a hash)."""
        check_user(name)
        check_role(role)
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        try:
            self._write("INSERT INTO api_users (name, role, token_id, token_hash, created_us) "
                        "VALUES (?, ?, ?, ?, ?)", (name, role, token_id, _hash_secret(secret), now_us()))
        except self._db.integrity_errors:
            raise StoreError(f"user {name!r} already exists") from None
        return f"{TOKEN_PREFIX}_{token_id}_{secret}"

    def user(self, name: str) -> User | None:
        rows = self._all("SELECT name, role, created_us, disabled FROM api_users WHERE name=?",
                         (name,))
        return User(rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])) if rows else None

    def users(self) -> list[User]:
        return [User(r[0], r[1], r[2], bool(r[3])) for r in
                self._all("SELECT name, role, created_us, disabled FROM api_users ORDER BY name")]

    def disable_user(self, name: str) -> None:
        if self._write("UPDATE api_users SET disabled=1 WHERE name=?", (name,)) != 1:
            raise StoreError(f"no user {name!r}")

    def authenticate(self, token: str) -> User | None:
        """The enabled user holding ``token``, or None; constant time in the secret."""
        parts = token.split("_", 2) if isinstance(token, str) else []
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(token) > 200:
            return None
        rows = self._all("SELECT name, role, created_us, disabled, token_hash FROM api_users "
                         "WHERE token_id=?", (parts[1],))
        expected = rows[0][4] if rows else _hash_secret("no such token")
        matches = hmac.compare_digest(expected, _hash_secret(parts[2]))
        if not rows or not matches or rows[0][3]:
            return None
        return User(rows[0][0], rows[0][1], rows[0][2], False)

    # --- grants ---------------------------------------------------------------------------
    def add_grant(self, patient_id: str, clinician: str, until_us: int, granted_by: str) -> Grant:
        check_id(patient_id, "patient id")
        user = self.user(check_user(clinician))
        if user is None or user.role != "clinician":
            raise StoreError(f"{clinician!r} is not a clinician user")
        start = now_us()
        if until_us <= start:
            raise StoreError("a grant's expiry must be in the future")
        row = self._db.one("INSERT INTO api_grants (patient_id, clinician, granted_us, until_us, "
                           "granted_by) VALUES (?, ?, ?, ?, ?) RETURNING id",
                           (patient_id, clinician, start, until_us, granted_by))
        return self.grant(int(row[0]) if row else 0)

    def grant(self, grant_id: int) -> Grant:
        rows = self._all("SELECT * FROM api_grants WHERE id=?", (grant_id,))
        if not rows:
            raise StoreError(f"no grant {grant_id}")
        return Grant(*rows[0])

    def revoke(self, patient_id: str, clinician: str, revoked_by: str) -> int:
        """Revoke every active grant of ``patient_id`` to ``clinician``; returns how many."""
        at = now_us()
        changed = self._write("UPDATE api_grants SET revoked_us=?, revoked_by=? WHERE patient_id=? "
                              "AND clinician=? AND revoked_us IS NULL AND until_us>?",
                              (at, revoked_by, patient_id, clinician, at))
        if changed == 0:
            raise StoreError(f"no active grant of patient {patient_id!r} to {clinician!r}")
        return changed

    def grants(self, patient_id: str | None = None, clinician: str | None = None) -> list[Grant]:
        clauses, args = _equal_to(patient_id=patient_id, clinician=clinician)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return [Grant(*r) for r in self._all(f"SELECT * FROM api_grants {where} ORDER BY id", args)]

    def access_decision(self, clinician: str, patient_id: str, at_us: int | None = None
                        ) -> tuple[bool, str]:
        """Whether ``clinician`` may see ``patient_id`` now, and the reason either way."""
        at = now_us() if at_us is None else at_us
        found = self.grants(patient_id, clinician)
        active = [g for g in found if g.active(at)]
        if active:
            return True, f"grant active until {iso_from_us(max(g.until_us for g in active))}"
        if not found:
            return False, f"patient {patient_id} has not granted {clinician} access"
        last = found[-1]
        if last.revoked_us is not None:
            return False, (f"patient {patient_id}'s grant to {clinician} was revoked at "
                           f"{last.to_dict(at)['revoked']}")
        return False, f"patient {patient_id}'s grant to {clinician} expired at {last.to_dict(at)['until']}"

    def patients_of(self, clinician: str, at_us: int | None = None) -> dict[str, int]:
        """Patients ``clinician`` may see now, with each one's latest grant expiry."""
        at = now_us() if at_us is None else at_us
        result: dict[str, int] = {}
        for g in self.grants(clinician=clinician):
            if g.active(at):
                result[g.patient_id] = max(result.get(g.patient_id, 0), g.until_us)
        return dict(sorted(result.items()))

    # --- access entries -------------------------------------------------------------------
    def add_access(self, build: Any) -> AccessRow:
        """Insert an entry; ``build(seq) -> (entry dict, leaf hash)`` so the seq is hashed too."""
        with self._db.write(LOCK_API) as db:
            # SQLite: AUTOINCREMENT's counter (a seq is never reused); PostgreSQL: the table only
            # grows (no DELETE anywhere), and writers queue on the lock, so MAX + 1 is the next.
            row = (db.one("SELECT COALESCE(MAX(seq), 0) FROM api_access") if db.is_postgres else
                   db.one("SELECT seq FROM sqlite_sequence WHERE name='api_access'"))
            seq = (int(row[0]) if row else 0) + 1
            entry, leaf = build(seq)
            db.execute('INSERT INTO api_access (seq, ts_us, entry, leaf_hash, "user", '
                       "patient_id, allowed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (seq, entry["ts_us"], json.dumps(entry, sort_keys=True), leaf,
                        entry.get("user"), entry.get("patient_id"),
                        1 if entry["allowed"] else 0))
        return AccessRow(seq, entry, leaf, None)

    def _access(self, row: tuple[Any, ...]) -> AccessRow:
        return AccessRow(int(row[0]), json.loads(row[1]), bytes(row[2]), row[3])

    def access_entry(self, seq: int) -> AccessRow | None:
        rows = self._all("SELECT seq, entry, leaf_hash, window_id FROM api_access WHERE seq=?",
                         (seq,))
        return self._access(rows[0]) if rows else None

    def access_entries(self, after: int = 0, limit: int = 100, user: str | None = None,
                       patient_id: str | None = None) -> list[AccessRow]:
        clauses, args = _equal_to(user=user, patient_id=patient_id)
        clauses, args = ["seq > ?", *clauses], [after, *args]
        rows = self._all(f"SELECT seq, entry, leaf_hash, window_id FROM api_access WHERE "
                         f"{' AND '.join(clauses)} ORDER BY seq LIMIT ?", [*args, limit])
        return [self._access(r) for r in rows]

    def unsealed(self, limit: int) -> list[AccessRow]:
        rows = self._all("SELECT seq, entry, leaf_hash, window_id FROM api_access "
                         "WHERE window_id IS NULL ORDER BY seq LIMIT ?", (limit,))
        return [self._access(r) for r in rows]

    def mark_sealed(self, first_seq: int, last_seq: int, window_id: str) -> None:
        self._write("UPDATE api_access SET window_id=? WHERE seq BETWEEN ? AND ? "
                    "AND window_id IS NULL", (window_id, first_seq, last_seq))
