"""The broker in Redis: one sequence and one history per org, shared by every instance.

Per org, three names in one hash slot (the `{org:N}` tag), so the same code runs on a Redis
Cluster: a hash `meta` (`e` the epoch, `s` the newest position), a stream `hist` whose entries are
batches (entry id = the batch's last position, so XRANGE finds a resume point directly and MINID
trims by position), and a sharded pub/sub channel. One script call per org and batch assigns the
positions, appends the history and publishes, atomically: what an instance receives is what the
history holds, in the same order.

An instance subscribes (SSUBSCRIBE) only to the orgs it has subscribers for, from the first one,
and unsubscribes a grace period after the last. It checks every batch's position against the one
it expects: a gap (a dropped message, a subscription that came back) is filled from the history,
or, if the history no longer holds it, ends in a `reset` for that org's subscribers. An epoch that
changes (Redis flushed or restarted empty) ends in a `reset` with reason `history_lost`.

Events of committed writes wait in a bounded outbox and are retried while Redis is away; what
cannot be kept (the outbox full, or older than the retry limit) is counted, every local subscriber
of that org gets `reset` (`events_lost`) at once, and a loss marker goes into the org's history as
soon as Redis answers, so every other instance and every later resume learns it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from .. import background, redis_client
from ..events import Event
from .broker import (
    Batch,
    BatchSink,
    History,
    HistoryUnavailable,
    Position,
    by_org,
    decode_batch,
    encode_events,
    encode_lost,
    new_epoch,
)

log = logging.getLogger("streamcore_server.realtime")

META_TTL_S = 7 * 24 * 3600  # an org's position outlives its history by far: epochs stay stable
HISTORY_READ_MAX = 1000  # batches per history read (each at most PUBLISH_BATCH_MAX events)
PUBLISH_BATCH_MAX = 1000

# KEYS: meta, hist, channel. ARGV: epoch if none yet, body, events it takes, history events kept,
# history ttl. Returns {epoch, first position}.
_PUBLISH = """
local n = tonumber(ARGV[3])
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local last = redis.call('HINCRBY', KEYS[1], 's', n)
local first = last - n + 1
local msg = epoch .. ' ' .. first .. '\\n' .. ARGV[2]
local minid = last - tonumber(ARGV[4]) + 1
if minid < 1 then minid = 1 end
local ok = redis.pcall('XADD', KEYS[2], 'MINID', minid, last .. '-0', 'm', msg)
if type(ok) == 'table' and ok.err then
  -- a history left from an earlier sequence (its meta expired first): it means nothing now
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], last .. '-0', 'm', msg)
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[1], META_TTL_S)
redis.call('SPUBLISH', KEYS[3], msg)
return {epoch, first}
""".replace("META_TTL_S", str(META_TTL_S))

# KEYS: meta. ARGV: epoch if none yet. Returns {epoch, newest position}.
_POSITION = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch)
end
redis.call('EXPIRE', KEYS[1], META_TTL_S)
return {epoch, tonumber(redis.call('HGET', KEYS[1], 's') or '0')}
""".replace("META_TTL_S", str(META_TTL_S))


def parse_message(org_id: int, message: bytes) -> tuple[str, Batch]:
    """`epoch first\\n` + a batch body, as the publish script wrote it."""
    line, _, body = message.partition(b"\n")
    epoch, first = line.split(b" ")
    return epoch.decode(), decode_batch(org_id, body, int(first))


class _Org:
    """An org this instance is subscribed to: where its sequence is, and what waits."""

    __slots__ = ("epoch", "expected", "filling", "held", "joined", "leaving", "users")

    def __init__(self) -> None:
        self.users = 0
        self.epoch: str | None = None
        self.expected = 0  # the next position to deliver
        self.joined: asyncio.Future[None] | None = None  # the subscription is confirmed
        self.filling = False  # a gap is being read from the history: messages wait in held
        self.held: list[tuple[str, Batch]] = []
        self.leaving: asyncio.TimerHandle | None = None


class RedisBroker:
    def __init__(
        self,
        url: str,
        prefix: str,
        sink: BatchSink,
        *,
        history_events: int,
        history_age_s: float,
        unsubscribe_grace_s: float = 5.0,
        outbox_max: int = 100_000,
        retry_s: float = 10.0,
        metrics: Any = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._sink = sink
        self._history_events = history_events
        self._history_ttl = max(1, int(history_age_s))
        self._grace_s = unsubscribe_grace_s
        self._outbox_max = outbox_max
        self._retry_s = retry_s
        self.metrics = metrics
        self._redis = redis_client.connect(url, timeout=2.0)
        self._publish_sha = hashlib.sha1(_PUBLISH.encode()).hexdigest()
        self._position = self._redis.register_script(_POSITION)
        # (enqueued at, event); events leave only once Redis has them, or are counted lost.
        self._outbox: deque[tuple[float, Event]] = deque()
        self._lost_orgs: dict[int, int] = {}  # org -> events lost, whose marker is not out yet
        self._head_dropped = 0
        self._wake = asyncio.Event()
        self._orgs: dict[int, _Org] = {}
        self._pubsub: Any = None
        self._pubsub_client: Any = None
        self._pubsub_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()
        self.clock: Callable[[], float] = asyncio.get_running_loop().time
        # Counters (also what the metrics endpoints read).
        self.events_lost = 0
        self.publish_retries = 0
        self.gaps_filled = 0
        self.interruptions = 0

    # -- names -----------------------------------------------------------------------------------

    def _tag(self, org_id: int) -> str:
        return f"{self.prefix}:rt:{{org:{org_id}}}"

    def channel(self, org_id: int) -> str:
        return self._tag(org_id) + ":ch"

    def _keys(self, org_id: int) -> list[str]:
        tag = self._tag(org_id)
        return [tag + ":meta", tag + ":hist", tag + ":ch"]

    def _org_of(self, channel: bytes) -> int:
        # b"{prefix}:rt:{org:N}:ch"
        text = channel.decode()
        return int(text[text.rindex("{org:") + 5 : text.rindex("}")])

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    @property
    def orgs_subscribed(self) -> int:
        return len(self._orgs)

    # -- publishing ------------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """The EventBus sink for committed writes: queue for Redis (synchronous, never raises)."""
        if len(self._outbox) >= self._outbox_max:
            _, dropped = self._outbox.popleft()
            self._head_dropped += 1  # the sender may hold it in flight: it must not pop twice
            self._lose(dropped.org_id, 1)
        self._outbox.append((self.clock(), event))
        self._wake.set()

    async def publish_now(self, events: list[Event]) -> None:
        """Publish and wait; raises if Redis cannot take them (the publish endpoint's 503)."""
        await self._send(by_org(events))

    async def _send(self, groups: dict[int, list[Event]]) -> None:
        calls = []
        for org_id, events in groups.items():
            for at in range(0, len(events), PUBLISH_BATCH_MAX):
                chunk = events[at : at + PUBLISH_BATCH_MAX]
                calls.append((org_id, encode_events(chunk), len(chunk)))
        await self._run_publish(calls)

    async def _run_publish(self, calls: list[tuple[int, bytes, int]]) -> None:
        """One EVALSHA per (org, body, events), pipelined; loads the script if Redis lost it.

        By hand rather than through redis-py's Script in a pipeline, which asks SCRIPT EXISTS
        before every execute: one command and one round trip more per publish.
        """
        for attempt in (1, 2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for org_id, body, n in calls:
                    pipe.evalsha(
                        self._publish_sha,
                        3,
                        *self._keys(org_id),
                        new_epoch(),
                        body,
                        n,
                        self._history_events,
                        self._history_ttl,
                    )
                try:
                    await pipe.execute()
                    return
                except NoScriptError:
                    if attempt == 2:
                        raise
            await self._redis.script_load(_PUBLISH)  # a restarted Redis: load it, then again

    async def _send_loss_markers(self) -> None:
        pending = dict(self._lost_orgs)
        await self._run_publish([(org_id, encode_lost(n), 1) for org_id, n in pending.items()])
        for org_id in pending:
            self._lost_orgs.pop(org_id, None)

    def _lose(self, org_id: int, n: int) -> None:
        self.events_lost += n
        self._lost_orgs[org_id] = self._lost_orgs.get(org_id, 0) + n
        log.error("realtime events lost", extra={"orgId": org_id, "n": n})
        org = self._orgs.get(org_id)
        if org is not None and org.epoch is not None:
            # This instance's subscribers learn it now; the others from the marker.
            self._sink.on_reset(org_id, org.epoch, org.expected - 1, "events_lost")

    async def _sender(self) -> None:
        backoff = 0.05
        while True:
            if not self._outbox and not self._lost_orgs:
                await self._wake.wait()
                self._wake.clear()
            try:
                if self._lost_orgs:
                    await self._send_loss_markers()
                n = min(len(self._outbox), PUBLISH_BATCH_MAX)
                if n:
                    batch = [self._outbox[i][1] for i in range(n)]
                    dropped = self._head_dropped
                    await self._send(by_org(batch))
                    for _ in range(max(0, n - (self._head_dropped - dropped))):
                        self._outbox.popleft()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                self.publish_retries += 1
                horizon = self.clock() - self._retry_s
                expired: dict[int, int] = {}
                while self._outbox and self._outbox[0][0] < horizon:
                    org_id = self._outbox.popleft()[1].org_id
                    expired[org_id] = expired.get(org_id, 0) + 1
                for org_id, count in expired.items():
                    self._lose(org_id, count)
                log.warning(
                    "realtime publish failed; retrying", extra={"queued": len(self._outbox)}
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    # -- routing ---------------------------------------------------------------------------------

    async def join(self, org_id: int) -> Position:
        """Receive this org's batches (from the first local subscriber); return its position."""
        org = self._orgs.get(org_id)
        if org is None:
            org = self._orgs[org_id] = _Org()
        org.users += 1
        if org.leaving is not None:
            org.leaving.cancel()
            org.leaving = None
        try:
            if org.joined is None:
                org.joined = asyncio.get_running_loop().create_future()
                await self._subscribe(org_id, org)
            await asyncio.shield(org.joined)
            if org.epoch is None:
                await self._sync(org_id, org)
        except BaseException:
            self.leave(org_id)
            raise
        assert org.epoch is not None
        return Position(org.epoch, org.expected - 1)

    async def _subscribe(self, org_id: int, org: _Org) -> None:
        joined = org.joined
        assert joined is not None
        try:
            if not self._pubsub_ready.is_set():
                raise HistoryUnavailable("the realtime subscription is not connected")
            try:
                await self._pubsub.ssubscribe(self.channel(org_id))
            except Exception as exc:
                raise HistoryUnavailable(str(exc)) from exc
            try:
                # Confirmed by the listener: only then can no batch slip between it and the read.
                await asyncio.wait_for(asyncio.shield(joined), 2.0)
            except TimeoutError:
                raise HistoryUnavailable("subscription not confirmed") from None
        except HistoryUnavailable as exc:
            org.joined = None
            if not joined.done():
                joined.set_exception(exc)  # for joiners of the same org waiting on it
                joined.exception()  # retrieved here: no "never retrieved" warning
            raise

    async def _sync(self, org_id: int, org: _Org) -> None:
        """Read the org's position; catch up from the history if this instance is behind."""
        try:
            epoch, top = await self._position(keys=self._keys(org_id)[:1], args=[new_epoch()])
        except Exception as exc:
            raise HistoryUnavailable(str(exc)) from exc
        epoch, top = epoch.decode(), int(top)
        if org.epoch is None:
            org.epoch, org.expected = epoch, top + 1
            held, org.held = org.held, []
            for message_epoch, batch in held:  # came between the confirmation and the read
                self._take(org_id, org, message_epoch, batch)
            return
        if epoch != org.epoch:
            org.epoch, org.expected = epoch, top + 1
            self._sink.on_reset(org_id, epoch, top, "history_lost")
        elif top >= org.expected and not org.filling:
            await self._fill(org_id, org, top)

    def leave(self, org_id: int) -> None:
        """One local subscriber fewer; unsubscribe a grace period after the last."""
        org = self._orgs.get(org_id)
        if org is None:
            return
        org.users -= 1
        if org.users <= 0 and org.leaving is None:
            org.leaving = asyncio.get_running_loop().call_later(
                self._grace_s, self._unsubscribe, org_id
            )

    def _unsubscribe(self, org_id: int) -> None:
        org = self._orgs.get(org_id)
        if org is None or org.users > 0:
            return
        del self._orgs[org_id]
        if self._pubsub_ready.is_set():
            task = asyncio.get_running_loop().create_task(
                self._pubsub.sunsubscribe(self.channel(org_id))
            )
            task.add_done_callback(_ignore_result)

    # -- receiving -------------------------------------------------------------------------------

    def _on_message(self, org_id: int, data: bytes) -> None:
        org = self._orgs.get(org_id)
        if org is None:
            return  # left
        epoch, batch = parse_message(org_id, data)
        if org.filling or org.epoch is None:  # a gap being filled, or the position not read yet
            org.held.append((epoch, batch))
            return
        self._take(org_id, org, epoch, batch)

    def _take(self, org_id: int, org: _Org, epoch: str, batch: Batch) -> None:
        if epoch != org.epoch:
            org.epoch, org.expected = epoch, batch.first
            self._sink.on_reset(org_id, epoch, batch.first - 1, "history_lost")
        if batch.first > org.expected:
            org.filling = True
            org.held.append((epoch, batch))
            task = asyncio.get_running_loop().create_task(self._fill(org_id, org, batch.first - 1))
            task.add_done_callback(_ignore_result)
            return
        self._advance(org_id, org, epoch, batch)

    def _advance(self, org_id: int, org: _Org, epoch: str, batch: Batch) -> None:
        """Deliver what of a batch that starts at or before org.expected is new."""
        if batch.last < org.expected:
            return  # already delivered (read from the history before this message came)
        if batch.first < org.expected:  # overlaps what was delivered: keep the rest
            skip = org.expected - batch.first
            batch = Batch(org.expected, batch.events[skip:], batch.lost)
        org.expected = batch.last + 1
        self._deliver(org_id, epoch, batch)

    def _deliver(self, org_id: int, epoch: str, batch: Batch) -> None:
        if batch.lost:
            self._sink.on_reset(org_id, epoch, batch.last, "events_lost")
        else:
            self._sink.on_batch(org_id, epoch, batch)

    async def _fill(self, org_id: int, org: _Org, upto: int) -> None:
        """Deliver positions org.expected..upto from the history, then what waited meanwhile."""
        org.filling = True
        try:
            after = org.expected - 1
            try:
                history = await self.history(org_id, after)
            except HistoryUnavailable:
                history = None
            if self._orgs.get(org_id) is not org:
                return
            if history is None or history.epoch != org.epoch or not history.covers(after):
                # Gone: the subscribers must reload. The sequence goes on from upto.
                epoch = history.epoch if history is not None and history.epoch else org.epoch
                assert epoch is not None
                org.epoch, org.expected = epoch, upto + 1
                self._sink.on_reset(org_id, epoch, upto, "events_lost")
            else:
                self.gaps_filled += 1
                for batch in history.batches:
                    if batch.first > upto:
                        break
                    if batch.last > upto:
                        batch = Batch(batch.first, batch.events[: upto - batch.first + 1])
                    self._advance(org_id, org, org.epoch or "", batch)
        finally:
            org.filling = False
            held, org.held = org.held, []
            for epoch, batch in held:
                if org.filling:  # a new gap among the held ones: the rest wait again
                    org.held.append((epoch, batch))
                else:
                    self._take(org_id, org, epoch, batch)

    async def history(self, org_id: int, after: int) -> History:
        """The org's epoch, newest position and the batches after `after` (bounded)."""
        meta, hist, _ = self._keys(org_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(meta, ["e", "s"])
                pipe.xrange(hist, min=f"{after + 1}-0", max="+", count=HISTORY_READ_MAX)
                (epoch, top), entries = await pipe.execute()
        except Exception as exc:
            raise HistoryUnavailable(str(exc)) from exc
        batches = [parse_message(org_id, fields[b"m"])[1] for _, fields in entries]
        return History(epoch.decode() if epoch else None, int(top or 0), batches)

    async def _listener(self) -> None:
        backoff = 0.1
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1.0)
            pubsub = client.pubsub()
            try:
                await pubsub.ping()  # connects: a subscription needs a live connection
                self._pubsub, self._pubsub_client = pubsub, client
                channels = [self.channel(org_id) for org_id in self._orgs]
                if channels:
                    await pubsub.ssubscribe(*channels)
                self._pubsub_ready.set()
                self.connected.set()
                backoff = 0.1
                awaiting = set(channels)  # back after a break: resync once all are confirmed
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        await pubsub.ping()  # notices a dead server within the timeout
                        continue
                    kind = message.get("type")
                    if kind == "smessage":
                        try:
                            self._on_message(self._org_of(message["channel"]), message["data"])
                        except Exception:
                            log.exception("bad realtime message")
                    elif kind == "ssubscribe":
                        name = message["channel"].decode()
                        org = self._orgs.get(self._org_of(message["channel"]))
                        if org is not None and org.joined is not None and not org.joined.done():
                            org.joined.set_result(None)
                        if name in awaiting:
                            awaiting.discard(name)
                            if not awaiting:
                                # What did each org publish while the subscription was away?
                                task = asyncio.get_running_loop().create_task(self._resync())
                                task.add_done_callback(_ignore_result)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.connected.is_set():
                    self.interruptions += 1
                    log.warning("realtime subscription lost; reconnecting")
                self.connected.clear()
                self._pubsub_ready.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()

    async def _resync(self) -> None:
        for org_id, org in list(self._orgs.items()):
            if org.joined is not None and not org.joined.done():
                org.joined.set_result(None)
            if org.epoch is None:
                continue
            for delay in (0.1, 0.3, 1.0, None):
                try:
                    await self._sync(org_id, org)
                    break
                except HistoryUnavailable:
                    # Just reconnected, so Redis is there: a pooled command connection from
                    # before the break fails first. Only a lasting failure is a reset.
                    if delay is None:
                        self._sink.on_reset(
                            org_id, org.epoch, org.expected - 1, "history_unavailable"
                        )
                    else:
                        await asyncio.sleep(delay)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listener()), loop.create_task(self._sender())]
        try:
            await asyncio.wait_for(self.connected.wait(), 1.0)
        except TimeoutError:
            log.warning("realtime broker not connected at start-up; retrying in the background")

    async def stop(self) -> None:
        await asyncio.gather(*(background.stop(task) for task in self._tasks))
        await self._redis.aclose()


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("realtime broker task failed", exc_info=task.exception())
