"""Signer on a PKCS#11 token through python-pkcs11 (SoftHSMv2 in the embedded default).

Every PKCS#11 call of a process runs on one dedicated thread: python-pkcs11 with SoftHSMv2 crashed when
two threads of one process signed through one login (docs/architecture.md, facts that shaped the
design). Scale is by processes, each with its own session (`shomei serve --workers N`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import heapq
import itertools
import threading

import pkcs11
from asn1crypto import core, keys
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key
from prometheus_client import Counter, Histogram

from ca_core.algorithms import SignatureAlgorithm
from ca_core.errors import ConfigError, HSMError

from .signer import URGENT

log = logging.getLogger(__name__)

HSM_SIGNATURES = Counter("shomei_hsm_signatures_total", "Signatures made by the token", ["result"])
RELOGINS = Counter("shomei_hsm_relogins_total", "Token sessions opened again after the session or login was lost")
# What a lost session or login raises: reopening it may cure it.
_SESSION_LOST = (pkcs11.exceptions.SessionHandleInvalid, pkcs11.exceptions.SessionClosed,
                 pkcs11.exceptions.UserNotLoggedIn, pkcs11.exceptions.DeviceRemoved,
                 pkcs11.exceptions.TokenNotPresent)
HSM_LATENCY = Histogram("shomei_hsm_sign_seconds", "Token signing latency (queue wait included)",
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5))
_SIGNED_OK = HSM_SIGNATURES.labels("ok")
_SIGNED_ERROR = HSM_SIGNATURES.labels("error")


class StartupError(ConfigError):
    """The token cannot be used at all: wrong PIN, missing module or token."""

    code = "hsm_startup"


# Results go back to the event loop in batches while the token has a backlog. Every hand-over wakes the
# loop's thread (a write to its self-pipe), and on a busy host that wake-up preempts the token thread: at
# one hand-over per signature, OCSP misses cost the loop's thread 3 context switches each and left the
# token threads runnable but waiting for a core a third of the time (measured, 2 cores; 0.4 switches per
# miss with batches, misses 70% -> 86% of the token's raw rate). A result is held only while at least
# QUEUED_PER_HELD signatures per held result are still queued, so holding adds a small fraction to the
# queueing delay a request already has (a lone request is handed over at once), and never more than
# MAX_HELD results. An urgent result is held only behind more urgent work (the signatures of an issuance
# batch), never behind answers for OCSP. A held result waits for the next signature: if the token hangs,
# it times out with that one (call_timeout).
MAX_HELD = 16
QUEUED_PER_HELD = 4


class _TokenThread:
    """The one thread of a process that talks to the token (python-pkcs11 with SoftHSM crashed when two
    threads signed through one login), taking work by priority: issuance, CRL and ceremony signatures
    (URGENT) before answers signed on demand for OCSP (DEFERRABLE), first come first served within one."""

    def __init__(self):
        self._heap: list = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._stopping = False
        self._held: dict = {}  # event loop -> [(future, result, error)] not handed over yet (this thread only)
        self._thread = threading.Thread(target=self._loop, name="pkcs11", daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            if self._stopping:
                raise RuntimeError("the token thread is stopped")
            heapq.heappush(self._heap, (priority, next(self._order), fn, args, loop, future))
            self._ready.notify()
        return future

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._heap and not self._stopping:
                    self._ready.wait()
                if not self._heap:
                    break
                priority, _n, fn, args, loop, future = heapq.heappop(self._heap)
                queued = len(self._heap)
                # urgent work behind this one: an urgent result may wait for it (a batch of issuances)
                urgent_next = queued > 0 and self._heap[0][0] == URGENT
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the caller
                result, error = None, exc
            held = self._held.get(loop)
            if held is None:
                held = self._held[loop] = []
            held.append((future, result, error))
            if (priority == URGENT and not urgent_next) or len(held) >= min(MAX_HELD, queued // QUEUED_PER_HELD):
                self._hand_over()
        self._hand_over()

    def _hand_over(self) -> None:
        """Settle every held result: one callback per event loop."""
        for loop, batch in self._held.items():
            try:
                loop.call_soon_threadsafe(_settle_all, batch)
            except RuntimeError:  # the caller's event loop is closed: nobody waits for this any more
                pass
        self._held = {}

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._thread.join()


def _settle_all(batch: list) -> None:
    for future, result, error in batch:
        _settle(future, result, error)


def _expire(future: asyncio.Future) -> None:
    if not future.done():  # the token did not answer in time; its late result is dropped by _settle
        future.set_exception(asyncio.TimeoutError())


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the caller gave up (timeout)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class PKCS11Signer:
    """One logged-in session on one thread."""

    def __init__(self, module: str, token_label: str, pin: str, *, call_timeout: float = 10.0):
        self.call_timeout = call_timeout
        self._module = module
        self._token_label = token_label
        self._pin = pin
        self._thread = _TokenThread()
        self._session = None
        self._keys: dict[str, object] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Load the module, find the token and log in; raises StartupError naming what is wrong."""
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        if not os.path.exists(self._module):
            raise StartupError(f"PKCS#11 module not found: {self._module}")
        try:
            lib = pkcs11.lib(self._module)
        except Exception as exc:
            raise StartupError(f"cannot load PKCS#11 module {self._module}: {exc}") from None
        try:
            token = lib.get_token(token_label=self._token_label)
        except pkcs11.NoSuchToken:
            raise StartupError(f"no token labelled {self._token_label!r} in {self._module}") from None
        except pkcs11.MultipleTokensReturned:
            raise StartupError(f"several tokens labelled {self._token_label!r}") from None
        try:
            self._session = token.open(user_pin=self._pin, rw=True)
        except pkcs11.PinIncorrect:
            raise StartupError(f"wrong user PIN for token {self._token_label!r}") from None
        except pkcs11.PinLocked:
            raise StartupError(f"the user PIN of token {self._token_label!r} is locked") from None
        except pkcs11.PKCS11Error as exc:
            raise StartupError(f"cannot open a session on token {self._token_label!r}: "
                               f"{type(exc).__name__}") from None

    async def close(self) -> None:
        def _close():
            if self._session is not None:
                try:
                    self._session.close()
                except pkcs11.PKCS11Error:
                    pass
                self._session = None
        await self._run(_close)
        self._thread.stop()

    async def _run(self, fn, *args, priority: int = URGENT):
        return await self._thread.submit(priority, fn, *args)

    # -- signing ---------------------------------------------------------------------------------
    def _private_key(self, label: str):
        key = self._keys.get(label)
        if key is None:
            if self._session is None:
                raise HSMError("the token session is not open")
            try:
                key = self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            except pkcs11.NoSuchKey:
                raise HSMError(f"the token has no private key labelled {label!r}") from None
            self._keys[label] = key
        return key

    def _with_session(self, fn):
        """Run ``fn`` on the session; when the session or the login is gone (token reset, HSM failover),
        log in again and retry once, so the service recovers without a restart."""
        if self._session is None:
            self._reopen_sync()
        try:
            return fn()
        except _SESSION_LOST as exc:
            log.warning("token session lost (%s); logging in again", type(exc).__name__)
            RELOGINS.inc()
            self._reopen_sync()
            return fn()

    def _sign_sync(self, label: str, alg: SignatureAlgorithm, digest: bytes) -> bytes:
        mech = Mechanism.RSA_PKCS if alg.is_rsa else Mechanism.ECDSA
        return self._with_session(
            lambda: alg.encode_signature(self._private_key(label).sign(alg.token_input(digest), mechanism=mech)))

    def _reopen_sync(self) -> None:
        self._keys.clear()
        old, self._session = self._session, None
        if old is not None:
            try:
                old.close()
            except pkcs11.PKCS11Error:
                pass
        try:
            self._open_sync()
        except StartupError as exc:
            raise HSMError(f"the token cannot be used now: {exc.message}") from None

    async def sign_digest(self, key_label: str, alg: SignatureAlgorithm, digest: bytes, *,
                          priority: int = URGENT) -> bytes:
        start = time.perf_counter()
        try:
            # Bounded: a hung token makes requests fail (503) instead of hanging them. One timer on the
            # token thread's future (asyncio.wait_for would add a task and a waiter per signature).
            future = self._thread.submit(priority, self._sign_sync, key_label, alg, digest)
            timer = asyncio.get_running_loop().call_later(self.call_timeout, _expire, future)
            try:
                sig = await future
            finally:
                timer.cancel()
        except HSMError:
            _SIGNED_ERROR.inc()
            raise
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:  # asyncio.TimeoutError is an OSError
            _SIGNED_ERROR.inc()
            self._keys.pop(key_label, None)
            log.error("token signing failed: %s", type(exc).__name__)
            raise HSMError(f"the token failed to sign ({type(exc).__name__})") from None
        _SIGNED_OK.inc()
        HSM_LATENCY.observe(time.perf_counter() - start)
        return sig

    async def sign(self, key_label: str, alg: SignatureAlgorithm, tbs_der: bytes, *, priority: int = URGENT) -> bytes:
        h = alg.new_hash()
        h.update(tbs_der)
        return await self.sign_digest(key_label, alg, h.digest(), priority=priority)

    # -- keys ------------------------------------------------------------------------------------
    def _spki_sync(self, label: str) -> bytes | None:
        try:
            pub = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
        except pkcs11.NoSuchKey:
            return None
        if pub.key_type == KeyType.RSA:
            return keys.PublicKeyInfo({
                "algorithm": {"algorithm": "rsa", "parameters": core.Null()},
                "public_key": keys.RSAPublicKey.load(encode_rsa_public_key(pub)),
            }).dump()
        point = core.OctetString.load(pub[Attribute.EC_POINT]).native
        return keys.PublicKeyInfo({
            "algorithm": {"algorithm": "ec", "parameters": keys.ECDomainParameters(name="named", value="secp256r1")},
            "public_key": point,
        }).dump()

    async def public_key(self, key_label: str) -> bytes | None:
        try:
            return await self._run(self._spki_sync, key_label)
        except pkcs11.PKCS11Error as exc:
            raise HSMError(f"the token failed to read key {key_label!r} ({type(exc).__name__})") from None

    def _generate_sync(self, label: str, key_type: str) -> bytes:
        private_template = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True}
        public_template = {Attribute.VERIFY: True}
        if key_type.startswith("rsa"):
            self._session.generate_keypair(KeyType.RSA, int(key_type[3:]), label=label, store=True,
                                           private_template=private_template, public_template=public_template)
        else:
            params = self._session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
            params.generate_keypair(label=label, store=True, private_template=private_template,
                                    public_template=public_template)
        return self._spki_sync(label)

    async def generate_keypair(self, key_label: str, key_type: str) -> bytes:
        try:
            return await self._run(self._generate_sync, key_label, key_type)
        except pkcs11.PKCS11Error as exc:
            raise HSMError(f"the token failed to generate key {key_label!r} ({type(exc).__name__})") from None

    async def ping(self) -> None:
        try:
            await asyncio.wait_for(self._run(self._with_session, lambda: self._session.generate_random(64)),
                                   self.call_timeout)
        except (pkcs11.PKCS11Error, asyncio.TimeoutError) as exc:
            raise HSMError(f"the token does not answer ({type(exc).__name__})") from None


_WITHDRAWN: dict[str, str] = {}  # PINs taken out of os.environ, by variable name


def withdraw_pin(pin_env: str) -> dict[str, str]:
    """Take a PIN given in the environment out of os.environ, so that no child process (workers, psql,
    softhsm2-util) inherits it; read_pin still finds it. Returns every PIN withdrawn so far (to hand to
    a spawned worker through its arguments, never its environment)."""
    value = os.environ.pop(pin_env, None)
    if value:
        _WITHDRAWN[pin_env] = value
    return dict(_WITHDRAWN)


def restore_withdrawn(pins: dict[str, str]) -> None:
    """In a spawned worker: the PINs its parent withdrew."""
    _WITHDRAWN.update(pins)


def read_pin(pin_file: str | None, pin_env: str, environ=os.environ) -> str:
    """The user PIN from a file (preferred) or an environment variable; raises StartupError."""
    if pin_file:
        try:
            return open(pin_file, encoding="utf-8").read().strip()
        except OSError as exc:
            raise StartupError(f"cannot read the PIN file {pin_file}: {exc.strerror}") from None
    pin = environ.get(pin_env) or (_WITHDRAWN.get(pin_env) if environ is os.environ else None)
    if not pin:
        raise StartupError(f"no token PIN: set hsm.pin_file (SHOMEI_PKCS11_PIN_FILE) or {pin_env}")
    return pin
