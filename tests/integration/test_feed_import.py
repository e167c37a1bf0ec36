"""`shomei feed import FILE` against the running service: batches, progress, rerun is idempotent."""
from __future__ import annotations

import datetime as dt
import json
import secrets

from tests.helpers import resident_code
from tests.integration.revocation_support import new_holder, rows_of, status_of
from tests.integration.test_online_cli import shomei


async def test_feed_import_file_twice(http, terminal, feed, keys, rt, tmp_path):
    h = await new_holder(http, terminal, keys)
    # the events occur after the certificates were issued (an event applies only to older ones)
    occurred = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).replace(microsecond=0).isoformat()
    events = [{"event_id": f"imp-{secrets.token_hex(6)}-{i}", "resident_code": resident_code(), "kind": "moved",
               "occurred_at": occurred} for i in range(2500)]
    events.insert(1234, {"event_id": f"imp-{secrets.token_hex(6)}", "resident_code": h.code, "kind": "died",
                         "occurred_at": occurred})
    events.append({"event_id": "imp-bad", "resident_code": "1", "kind": "moved", "occurred_at": "x"})
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    url = str(http.make_url("")).rstrip("/")  # the private listener, with the feed's certificate
    args = ("feed", "import", str(path), "--url", url, "--cert", str(feed.cert_file), "--key", str(feed.key_file),
            "--cacert", str(feed.ca_file), "--batch-size", "1000")
    rc, out, err = await shomei(*args)
    assert rc == 0, err
    assert out.split() == ["applied=1", "duplicate=0", "no_certificate=2500", "issued_after_event=0",
                           "rejected=1"]
    assert "event" in err and "2502/2502" in err  # the progress bar
    assert await status_of(rt, h.serial("signing")) == "revoked" and await status_of(rt, h.serial("auth")) == "revoked"
    rc, out, err = await shomei(*args)
    assert rc == 0 and out.split() == ["applied=0", "duplicate=2501", "no_certificate=0", "issued_after_event=0",
                                         "rejected=1"]
    assert len(await rows_of(rt, h.serial("auth"))) == 1
