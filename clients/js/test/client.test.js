// The client against a real server: every codec, a resume after a drop, a 429 retry, a 1013
// reconnect and a refusal that is final.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import { Codec, decodeFrame, FrameError, StreamClient, StreamRefused } from "../src/index.js";
import { freePort, Server, until } from "./server.js";

/** Collect what a client surfaces, in order. */
function record(client) {
  const seen = { events: [], frames: [], resets: [], refused: [], disconnects: [], hellos: [], urls: [] };
  client.addEventListener("events", (e) => {
    seen.frames.push(e.detail);
    seen.events.push(...e.detail.events);
  });
  client.addEventListener("reset", (e) => seen.resets.push(e.detail));
  client.addEventListener("refused", (e) => seen.refused.push(e.detail));
  client.addEventListener("disconnect", (e) => seen.disconnects.push(e.detail));
  client.addEventListener("hello", (e) => seen.hellos.push(e.detail.message));
  return seen;
}

/** `ws` with the URLs it was asked for kept, and a switch that makes connects fail. */
function gatedWebSocket(urls) {
  const gate = { open: true };
  class Gated extends WebSocket {
    constructor(url, protocols) {
      urls.push(url);
      // A closed gate: the same handshake to a port nobody listens on, so it fails at once.
      super(gate.open ? url : url.replace(/:\d+\//, ":9/"), protocols);
    }
  }
  return { Gated, gate };
}

const trades = (from, n, extra = {}) =>
  Array.from({ length: n }, (_, i) => ({ type: "trade", conflatable: false, data: { n: from + i, ...extra } }));

describe("frames", () => {
  test("a header that breaks a rule is refused with the rule's name", async () => {
    const frame = new Uint8Array(34);
    frame.set([0x53, 0x43, 2, 0, 0]);
    new DataView(frame.buffer).setUint32(24, 0);
    new DataView(frame.buffer).setUint32(28, 2);
    frame.set([0x5b, 0x5d], 32); // []
    assert.deepEqual((await decodeFrame(frame)).items, []);
    const bad = (offset, value, message) => {
      const copy = frame.slice();
      copy[offset] = value;
      return assert.rejects(decodeFrame(copy), (err) => err instanceof FrameError && err.message === message);
    };
    await bad(0, 0, "bad magic");
    await bad(2, 1, "unsupported version 1");
    await bad(3, 3, "unknown codec 3");
    await bad(4, 2, "unknown kind 2");
    await bad(5, 1, "flags must be 0");
    await bad(23, 1, "first_seq after seq");
    await bad(31, 3, "length mismatch");
    await bad(27, 1, "count mismatch");
    await assert.rejects(decodeFrame(frame.subarray(0, 31)), /truncated header/);
    // A gzip body that claims to be shorter than it inflates to stops at the claim.
    const gz = new Uint8Array(await new Response(new Blob(["[" + "1,".repeat(5000) + "1]"]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer());
    const bomb = new Uint8Array(32 + gz.length);
    bomb.set([0x53, 0x43, 2, Codec.GZIP, 0]);
    new DataView(bomb.buffer).setUint32(24, 5001);
    new DataView(bomb.buffer).setUint32(28, 100);
    bomb.set(gz, 32);
    await assert.rejects(decodeFrame(bomb), /length mismatch/);
  });
});

describe("the client alone", () => {
  test("without a global CustomEvent (Node 18), events still carry their detail", async () => {
    const saved = globalThis.CustomEvent;
    delete globalThis.CustomEvent;
    try {
      const { StreamClient: Fresh } = await import("../src/client.js?without-custom-event");
      const client = new Fresh("ws://127.0.0.1:9/v2/realtime/stream", "t", { WebSocket });
      let detail;
      client.addEventListener("closed", (e) => (detail = e.detail));
      client.close();
      assert.deepEqual(detail, { code: 1000, reason: "closed by the client", fatal: false });
    } finally {
      globalThis.CustomEvent = saved;
    }
  });

  test("bad arguments are refused at once", () => {
    assert.throws(() => new StreamClient([], "t", { WebSocket }), TypeError);
    assert.throws(() => new StreamClient("ws://a", "t", { WebSocket, codec: "brotli" }), /codec/);
    assert.throws(() => new StreamClient("ws://a", 42, { WebSocket }), /token/);
  });
});

describe("against a real server", () => {
  let server;
  let token;
  before(async () => {
    server = await Server.start();
    token = await server.login();
  });
  after(async () => {
    await server.stop();
  });

  for (const codec of ["zstd", "gzip", "none"]) {
    test(`codec ${codec}: small frames raw, large ones ${codec}, all in order`, async () => {
      const client = new StreamClient(server.ws, token, { codec, WebSocket });
      const seen = record(client);
      client.start();
      try {
        await until(() => seen.hellos.length === 1, { what: "hello" });
        assert.equal(seen.hellos[0].codec, codec);
        assert.equal(seen.hellos[0].protocol, 2);
        await server.publish(token, trades(0, 1));
        await until(() => seen.events.length === 1, { what: "the small event" });
        // Compressible and over the 1 KiB threshold: compressed unless the codec is none.
        await server.publish(token, trades(1, 200, { note: "x".repeat(40) }));
        await until(() => seen.events.length === 201, { what: "the large window" });
        assert.deepEqual(
          seen.events.map((e) => e.data.n),
          Array.from({ length: 201 }, (_, i) => i),
        );
        assert.equal(seen.frames[0].codec, Codec.NONE);
        const expected = { zstd: Codec.ZSTD, gzip: Codec.GZIP, none: Codec.NONE }[codec];
        assert.ok(seen.frames.slice(1).some((f) => f.codec === expected), JSON.stringify(seen.frames.map((f) => f.codec)));
        assert.equal(client.lastSeq, seen.frames.at(-1).seq);
        assert.equal(client.connects, 1);
      } finally {
        client.close();
      }
    });
  }

  test("a dropped socket: it reconnects, resumes from last_seq, misses nothing, repeats nothing", async () => {
    const urls = [];
    const { Gated, gate } = gatedWebSocket(urls);
    const client = new StreamClient(server.ws, token, { codec: "zstd", WebSocket: Gated });
    const seen = record(client);
    let socket;
    client.addEventListener("open", () => (socket = client._conn.ws));
    client.start();
    try {
      await until(() => seen.hellos.length === 1, { what: "hello" });
      await server.publish(token, trades(0, 5));
      await until(() => seen.events.length === 5, { what: "the first events" });
      const epoch = client.epoch;
      const lastSeq = client.lastSeq;
      gate.open = false;
      socket._socket.destroy(); // the network drops it: no close frame
      await until(() => seen.disconnects.length >= 2, { what: "a failed reconnect" });
      assert.equal(seen.disconnects[0].code, 1006);
      await server.publish(token, trades(5, 5)); // published while it is away
      gate.open = true;
      await until(() => seen.events.length === 10, { what: "the missed events" });
      assert.deepEqual(
        seen.events.map((e) => e.data.n),
        [...Array(10).keys()],
      );
      assert.equal(seen.resets.length, 0);
      const resumed = new URL(urls.at(-1));
      assert.equal(resumed.searchParams.get("epoch"), epoch);
      assert.equal(resumed.searchParams.get("last_seq"), String(lastSeq));
      assert.equal(client.connects, 2);
      await server.publish(token, trades(10, 1));
      await until(() => seen.events.length === 11, { what: "the live stream after the resume" });
    } finally {
      client.close();
    }
  });

  test("a hole: the frame is not applied; it reconnects at once and resumes from last_seq", async () => {
    const urls = [];
    const { Gated } = gatedWebSocket(urls);
    const client = new StreamClient(server.ws, token, { WebSocket: Gated });
    const seen = record(client);
    client.start();
    try {
      await until(() => seen.hellos.length === 1, { what: "hello" });
      await server.publish(token, trades(0, 5));
      await until(() => seen.events.length === 5, { what: "the first events" });
      // As if the last three positions had never arrived: the next frame starts past a hole.
      const applied = client.lastSeq;
      client.lastSeq = applied - 3;
      await server.publish(token, trades(5, 1));
      await until(() => seen.events.length === 9, { what: "the replay from the history" });
      assert.deepEqual(seen.disconnects.map((d) => [d.code, d.delayMs]), [[1000, 0]]);
      assert.equal(new URL(urls.at(-1)).searchParams.get("last_seq"), String(applied - 3));
      assert.deepEqual(
        seen.events.map((e) => e.data.n),
        [0, 1, 2, 3, 4, 2, 3, 4, 5],
      );
      assert.equal(client.lastSeq, applied + 1);
    } finally {
      client.close();
    }
  });

  test("given several URLs, it moves on from one that cannot be reached", async () => {
    const away = `ws://127.0.0.1:${await freePort()}/v2/realtime/stream`; // nobody listens
    const client = new StreamClient([away, server.ws], token, { WebSocket });
    const seen = record(client);
    client.start();
    try {
      await until(() => seen.hellos.length === 1, { what: "hello from the second URL" });
      assert.equal(seen.disconnects[0].url, away);
      assert.equal(seen.disconnects[0].code, 1006);
      assert.equal(client.url, server.ws);
      assert.equal(client.connects, 1);
    } finally {
      client.close();
    }
  });

  test("a resume whose epoch the server does not know gets reset, surfaced to the application", async () => {
    const client = new StreamClient(server.ws, token, { WebSocket });
    const seen = record(client);
    client.epoch = "000000000000";
    client.lastSeq = 1;
    client.start();
    try {
      await until(() => seen.resets.length === 1, { what: "the reset" });
      assert.equal(seen.resets[0].reason, "epoch_changed");
      assert.equal(client.epoch, seen.hellos[0].epoch);
      await server.publish(token, trades(0, 1));
      await until(() => seen.events.length === 1, { what: "the live stream after the reset" });
    } finally {
      client.close();
    }
  });

  test("a bad token is refused once, with the status and the error body, and not retried", async () => {
    const client = new StreamClient(server.ws, "not-a-token", { WebSocket });
    const seen = record(client);
    const closed = new Promise((resolve) => client.addEventListener("closed", (e) => resolve(e.detail)));
    client.start();
    const detail = await closed;
    assert.equal(detail.fatal, true);
    assert.ok(detail.error instanceof StreamRefused);
    assert.equal(detail.error.status, 403);
    assert.equal(detail.error.body.error.code, "invalid_token");
    assert.equal(seen.refused.length, 1);
    assert.equal(client.connects, 0);
  });
});

describe("over the user's connection cap", () => {
  let server;
  let token;
  before(async () => {
    server = await Server.start({ REALTIME_MAX_CONNECTIONS_PER_USER: "1" });
    token = await server.login();
  });
  after(async () => {
    await server.stop();
  });

  test("429: it waits the Retry-After, then connects once a slot is free", async () => {
    const first = new StreamClient(server.ws, token, { WebSocket });
    const firstSeen = record(first);
    first.start();
    const second = new StreamClient(server.ws, token, { WebSocket });
    const seen = record(second);
    try {
      await until(() => firstSeen.hellos.length === 1, { what: "the first connection" });
      second.start();
      await until(() => seen.refused.length === 1, { what: "the 429" });
      assert.equal(seen.refused[0].status, 429);
      assert.equal(seen.refused[0].body.error.code, "connection_limit_exceeded");
      assert.equal(seen.refused[0].error.retryAfterMs, 5000);
      assert.ok(seen.disconnects[0].delayMs >= 5000, `retried after ${seen.disconnects[0].delayMs} ms`);
      first.close();
      const freed = Date.now();
      await until(() => seen.hellos.length === 1, { timeoutMs: 20000, what: "the retried connection" });
      assert.ok(Date.now() - freed < 15000);
      await server.publish(token, trades(0, 1));
      await until(() => seen.events.length === 1, { what: "events on the retried connection" });
    } finally {
      first.close();
      second.close();
    }
  });
});

describe("a slow consumer closed with 1013", () => {
  let server;
  let token;
  before(async () => {
    server = await Server.start({
      REALTIME_SLOW_CONSUMER_POLICY: "disconnect",
      REALTIME_QUEUE_MAX_BYTES: "65536",
      REALTIME_QUEUE_MAX_FRAMES: "4",
    });
    token = await server.login();
  });
  after(async () => {
    await server.stop();
  });

  test("it reconnects and resumes: every event once, in order", async () => {
    const client = new StreamClient(server.ws, token, { codec: "none", WebSocket });
    const seen = record(client);
    let socket;
    client.addEventListener("open", () => (socket = client._conn.ws));
    client.start();
    try {
      await until(() => seen.hellos.length === 1, { what: "hello" });
      socket.pause(); // stop reading: the kernel's buffers fill, then the server's queue
      const blob = () => randomBytes(24 * 1024).toString("base64"); // incompressible
      let sent = 0;
      // Bounded: at most 60 batches of 20 events of 32 KiB (about 40 MB).
      for (let batch = 0; batch < 60; batch++) {
        await server.publish(token, trades(sent, 20).map((e) => ({ ...e, data: { ...e.data, blob: blob() } })));
        sent += 20;
        const m = await server.metrics();
        if (m.realtime.slow_consumer_disconnects >= 1) break;
      }
      const m = await server.metrics();
      assert.ok(m.realtime.slow_consumer_disconnects >= 1, "the server never closed the slow consumer");
      socket.resume();
      await until(() => client.connects === 2, { timeoutMs: 20000, what: "the reconnect" });
      await server.publish(token, trades(sent, 1));
      sent += 1;
      await until(() => seen.events.length === sent, { timeoutMs: 20000, what: "every event" });
      assert.deepEqual(
        seen.events.map((e) => e.data.n),
        [...Array(sent).keys()],
      );
      assert.equal(seen.resets.length, 0);
      // The close frame reaches it behind the frames it had not read.
      assert.equal(seen.disconnects[0].code, 1013);
    } finally {
      client.close();
    }
  });
});
