"""The in-process cache of signed answers: a dict look-up on the hot path, invalidated by serial.

Keys are the raw request (the GET path text or the POST body) and the request's CertIDs; both point at
the same Entry. An answer is stored only if no invalidation of its serials arrived while it was being
made (``seq``), and nothing is served from memory while the status listener is disconnected
(``enabled``): correctness over speed.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from email.utils import formatdate


@dataclass(slots=True)
class Entry:
    body: bytes
    this_update: float  # POSIX seconds
    next_update: float
    refresh_at: float  # after this the answer is signed anew on the next request
    serials: tuple[int, ...]
    etag: str
    last_modified: str
    expires: str
    status: str  # good | revoked | hold | unknown (for metrics); "mixed" for several CertIDs

    @classmethod
    def make(cls, body: bytes, this_update: float, next_update: float, refresh_at: float,
             serials: tuple[int, ...], status: str) -> "Entry":
        return cls(body, this_update, next_update, refresh_at, serials,
                   '"' + hashlib.sha256(body).hexdigest()[:32] + '"',
                   formatdate(this_update, usegmt=True), formatdate(next_update, usegmt=True), status)

    def headers(self, now: float) -> dict[str, str]:
        """RFC 5019 section 6.2 caching headers."""
        max_age = max(0, int(self.next_update - now))
        return {"Content-Type": "application/ocsp-response",
                "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
                "ETag": self.etag, "Last-Modified": self.last_modified, "Expires": self.expires}


class ResponseCache:
    def __init__(self, max_entries: int, max_invalidations: int = 10_000):
        self.max_entries = max(16, max_entries)
        # Recent invalidations kept (about 1 MB for 10,000; the oldest tenth is forgotten when over): an
        # answer begun before the last one forgotten is not stored. At 100 status changes a second that is
        # still 90 s back, far longer than an answer takes.
        self.max_invalidations = max(16, max_invalidations)
        self._entries: dict[object, Entry] = {}
        self._keys_of: dict[int, list[object]] = {}
        self.enabled = False  # True only while the status listener is connected
        self.seq = 0  # bumped by every invalidation; read it before reading a status, pass it to put()
        self._invalidated: dict[int, int] = {}  # serial -> seq of its last invalidation, oldest first
        self._status: dict[int, tuple[int, object]] = {}  # serial -> (CA generation id, CertStatus)
        self._floor = 0  # answers begun before this seq are refused (invalidations forgotten, listener lost)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key, now: float) -> Entry | None:
        """The entry for ``key`` if the cache may be used and the answer is not due for refresh."""
        entry = self._entries.get(key)
        if entry is None or not self.enabled:
            return None
        if now >= entry.refresh_at:
            return None
        return entry

    def changed_since(self, serials, seq: int) -> bool:
        if seq < self._floor or not self.enabled:
            return True
        inv = self._invalidated
        return any(inv.get(s, -1) > seq for s in serials)

    def put(self, keys, entry: Entry, since: int) -> bool:
        """Store ``entry`` under every key unless one of its serials was invalidated after ``since`` was read
        (the answer may predate the change) or the listener is down. Returns whether it was stored."""
        if self.changed_since(entry.serials, since):
            return False
        if len(self._entries) >= self.max_entries:
            self._evict(len(self._entries) - self.max_entries + max(1, self.max_entries // 10))
        for key in keys:
            old = self._entries.get(key)
            self._entries[key] = entry
            if old is None:
                for serial in entry.serials:
                    self._keys_of.setdefault(serial, []).append(key)
        return True

    def _evict(self, count: int) -> None:
        # Oldest first (dicts keep insertion order).
        victims = []
        for key in self._entries:
            victims.append(key)
            if len(victims) >= count:
                break
        for key in victims:
            self._unlink(key, self._entries.pop(key))

    def _unlink(self, key, entry: Entry, skip: int | None = None) -> None:
        """Remove ``key`` from the key lists of the serials of ``entry`` (but ``skip``'s)."""
        for serial in entry.serials:
            if serial == skip:
                continue
            keys = self._keys_of.get(serial)
            if keys is not None:
                try:
                    keys.remove(key)
                except ValueError:
                    pass
                if not keys:
                    del self._keys_of[serial]

    def get_status(self, ca_generation_id: int, serial: int):
        """The status of a certificate as last read, under the same rules as answers; or None."""
        if not self.enabled:
            return None
        hit = self._status.get(serial)
        return hit[1] if hit is not None and hit[0] == ca_generation_id else None

    def put_status(self, ca_generation_id: int, serial: int, status, since: int) -> None:
        if self.changed_since((serial,), since):
            return
        if len(self._status) >= self.max_entries:
            self._status.clear()
        self._status[serial] = (ca_generation_id, status)

    def invalidate(self, serial: int) -> None:
        """Drop every answer about ``serial`` (its status changed)."""
        self._status.pop(serial, None)
        self.seq += 1
        inv = self._invalidated
        inv.pop(serial, None)  # re-inserted last: the map stays in seq order, oldest first
        inv[serial] = self.seq
        if len(inv) > self.max_invalidations:
            # Forget the oldest tenth; answers begun before the newest invalidation forgotten are then not
            # stored (see put), which is what an invalidation they might have missed would have done.
            drop = list(itertools.islice(inv, len(inv) - self.max_invalidations + self.max_invalidations // 10))
            self._floor = max(self._floor, inv[drop[-1]])
            for old in drop:
                del inv[old]
        for key in self._keys_of.pop(serial, ()):
            entry = self._entries.pop(key, None)
            if entry is not None and len(entry.serials) > 1:
                # An answer about several certificates: its other serials must not keep pointing at it.
                self._unlink(key, entry, skip=serial)

    def clear(self) -> None:
        """Forget everything (listener lost or reconnected: notifications may have been missed)."""
        self.seq += 1
        self._floor = self.seq
        self._entries.clear()
        self._keys_of.clear()
        self._invalidated.clear()
        self._status.clear()
