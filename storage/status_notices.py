"""The status channel in PostgreSQL: every status change NOTIFYs ``shomei_status`` on commit with the
hex serial (or '*' for a bulk change), from the triggers of migrations 0005 and 0006, so no write
path can forget it. A writer confirms that every live listener has seen its change with a sync
notice on the same channel, answered by each listener on ``shomei_status_ack``."""
from __future__ import annotations

STATUS_CHANNEL = "shomei_status"
ACK_CHANNEL = "shomei_status_ack"
LISTENER_NAME = "shomei-status-listener"  # application_name of every listening connection
SYNC_PREFIX = "sync:"
CLIENTS_CHANGED = "clients"  # a client credential was disabled or rotated (storage.clients)


async def live_listeners(conn) -> set[int]:
    """Backend pids of the listening connections of every process and host on this database."""
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1"
                            " AND datname = current_database()", LISTENER_NAME)
    return {r["pid"] for r in rows}


async def name_listener(conn) -> None:
    """Mark a connection that LISTENs on the status channel (live_listeners finds it)."""
    await conn.execute(f"SET application_name = '{LISTENER_NAME}'")


async def send_sync(conn, token: str) -> None:
    """Queue a sync notice after everything committed so far (NOTIFY delivers in commit order)."""
    await conn.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, SYNC_PREFIX + token)


async def send_ack(conn, token: str, listener_pid: int) -> None:
    """A listener has applied every notice up to the sync notice ``token``."""
    await conn.execute("SELECT pg_notify($1, $2)", ACK_CHANNEL, f"{token}:{listener_pid}")
