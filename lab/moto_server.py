"""The lab's moto_server: moto's own server, with S3 writes atomic per key.

Run with the lab's venv Python, taking moto_server's own flags::

    .venv/bin/python lab/moto_server.py -H 127.0.0.1 -p 5000

moto's threaded server answers each request in its own thread, and its S3
handlers check `If-None-Match` / `If-Match` and then write, with nothing
between the two: two conditional PUTs of one key a few milliseconds apart can
both pass the check and both "win". Real S3 is atomic: one of them gets 412
PreconditionFailed (or 409 ConditionalRequestConflict). The relay's claims
rest on that (src/ledger/s3.rs), so the lab must behave the same.

This launcher changes one thing: every request that changes an object (PUT,
POST or DELETE on a key: put, copy, part upload, complete multipart, delete,
and their conditional forms) runs under a lock for that bucket and key, so a
condition is checked and the write made with no other write to that key in
between. Unconditional writes take the lock too: a delete or an overwrite
landing between a conditional write's check and its write would make that
check stale just as well. Reads take no lock, and requests on other keys
(up to a hash collision among the lock stripes) go on in parallel.

Everything else is moto's: `moto.server.main` with the same command-line
flags, the account of each request taken from the credentials that signed it,
the environment as given.
"""

import sys
import threading
from typing import Any

from moto.s3.responses import S3Response
from moto.server import main

# Locks by hash of (bucket, key): bounded however many keys the lab writes.
# One request holds at most one of them, so they cannot deadlock.
_STRIPES = [threading.Lock() for _ in range(256)]
_WRITES = frozenset({"PUT", "POST", "DELETE"})

# moto 5.x: S3Response.key_response (the route for /<bucket>/<key>) reads the
# request into the instance (setup_class: bucket name, headers, body), then
# calls _key_response, which checks any condition and makes the write.
_key_response = getattr(S3Response, "_key_response", None)
if _key_response is None or not callable(_key_response):
    sys.exit(
        "lab/moto_server.py: moto.s3.responses.S3Response._key_response not found; "
        "this launcher is written for moto 5.x (lab/requirements.txt)"
    )


def _atomic_key_response(self: S3Response, request: Any, full_url: str) -> Any:
    if request.method.upper() not in _WRITES:
        return _key_response(self, request, full_url)
    stripe = _STRIPES[hash((self.bucket_name, self.parse_key_name())) % len(_STRIPES)]
    with stripe:
        return _key_response(self, request, full_url)


S3Response._key_response = _atomic_key_response  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    sys.exit(main())
