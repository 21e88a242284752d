// A client of GET /v2/realtime/stream that survives reconnects: it keeps the org sequence's epoch
// and the last position it applied, resumes wherever it lands, and never applies a frame across
// a gap (docs/PROTOCOL.md, version 2). The behaviour follows the Python StreamClient.
import { decodeFrame, DEFAULT_MAX_RAW_LENGTH, FrameKind } from "./frame.js";

export const SUBPROTOCOL = "streamcore.v2";
// Close codes after which reconnecting cannot help.
export const FATAL_CLOSE_CODES = new Set([1008]);
// The instance is going away (1001, 1012) or overloaded (1013): reconnect, elsewhere if we can.
export const MOVE_ON_CLOSE_CODES = new Set([1001, 1012, 1013]);
const ABNORMAL = 1006; // no close frame: the socket dropped or the handshake failed

/** The delay a Retry-After header asks for, in ms (seconds or an HTTP date); null if absent. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value === "") return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** The server refused the stream at the handshake: `status` and `body` (the API's error) say why. */
export class StreamRefused extends Error {
  constructor(status, body, retryAfterMs = null) {
    const code = body && body.error && body.error.code;
    super(`stream refused with HTTP ${status}${code ? ` (${code})` : ""}`);
    this.name = "StreamRefused";
    this.status = status;
    this.body = body;
    this.retryAfterMs = retryAfterMs;
  }
}

// Node 18 has EventTarget and Event but no global CustomEvent.
const DetailEvent =
  globalThis.CustomEvent ??
  class CustomEvent extends Event {
    constructor(type, options = {}) {
      super(type);
      this.detail = options.detail ?? null;
    }
  };

function detailEvent(type, detail) {
  return new DetailEvent(type, { detail });
}

/**
 * Subscribe, decode, resume. Listen for "events" (detail {events, firstSeq, seq}, in order),
 * "reset" (detail {reason, seq, message}: reload state over HTTP), "hello", "open",
 * "disconnect", "refused", "error" and "closed" (the client gave up or was closed).
 */
export class StreamClient extends EventTarget {
  constructor(url, token, options = {}) {
    super();
    this.urls = Array.isArray(url) ? [...url] : [url];
    if (this.urls.length === 0 || this.urls.some((u) => typeof u !== "string" || !u))
      throw new TypeError("at least one stream URL");
    if (typeof token !== "string" && typeof token !== "function")
      throw new TypeError("token is a string or a function returning one");
    this.token = token;
    this.codec = options.codec ?? "zstd";
    if (!["zstd", "gzip", "none"].includes(this.codec))
      throw new TypeError(`codec must be zstd, gzip or none, not ${this.codec}`);
    this.properties = options.properties ?? null;
    this.reconnect = options.reconnect ?? true;
    this.initialBackoffMs = options.initialBackoffMs ?? 50;
    this.maxBackoffMs = options.maxBackoffMs ?? 5000;
    this.openTimeoutMs = options.openTimeoutMs ?? 10000;
    this.maxRawLength = options.maxRawLength ?? DEFAULT_MAX_RAW_LENGTH;
    this.random = options.random ?? Math.random;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function")
      throw new TypeError("no WebSocket here: pass options.WebSocket (in Node < 22, the ws package)");
    this.epoch = null;
    this.lastSeq = null;
    this.hello = null;
    this.connects = 0;
    this.frames = 0;
    this.lastCloseCode = null;
    this._at = 0; // which of urls the next connect tries
    this._backoff = this.initialBackoffMs;
    this._gapsInARow = 0;
    this._conn = null;
    this._timer = null;
    this._started = false;
    this._closed = false;
  }

  /** The URL the current (or next) connection uses, without its query. */
  get url() {
    return this.urls[this._at];
  }

  /** Whether a connection is open now. */
  get connected() {
    return this._conn !== null && this._conn.opened && !this._conn.ended;
  }

  /** Connect (once); events follow as they arrive. */
  start() {
    if (this._closed) throw new Error("this client was closed");
    if (!this._started) {
      this._started = true;
      this._connect();
    }
    return this;
  }

  /** Stop for good: close the socket, cancel any reconnect. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    this._timer = null;
    const conn = this._conn;
    if (conn && !conn.ended) {
      conn.ended = true;
      try {
        conn.ws.close(1000);
      } catch {
        // already closing
      }
    }
    this.dispatchEvent(detailEvent("closed", { code: 1000, reason: "closed by the client", fatal: false }));
  }

  /** The handshake URL: the codec, the narrowing and, once known, the resume point. */
  streamUrl() {
    const target = new URL(this.url);
    target.searchParams.set("codec", this.codec);
    if (this.properties && this.properties.length)
      target.searchParams.set("properties", this.properties.join(","));
    if (this.epoch !== null && this.lastSeq !== null) {
      target.searchParams.set("epoch", this.epoch);
      target.searchParams.set("last_seq", String(this.lastSeq));
    }
    return target.toString();
  }

  _nextUrl() {
    this._at = (this._at + 1) % this.urls.length;
  }

  async _connect() {
    this._timer = null;
    if (this._closed) return;
    let token;
    try {
      token = typeof this.token === "function" ? await this.token() : this.token;
    } catch (error) {
      this.dispatchEvent(detailEvent("error", { error }));
      this._schedule(this._delay());
      return;
    }
    if (this._closed) return;
    let ws;
    try {
      // Browsers cannot set headers: the token travels as a subprotocol the server never echoes.
      ws = new this.WebSocket(this.streamUrl(), [SUBPROTOCOL, `bearer.${token}`]);
    } catch (error) {
      this.dispatchEvent(detailEvent("error", { error }));
      this._nextUrl();
      this._schedule(this._delay());
      return;
    }
    ws.binaryType = "arraybuffer";
    const conn = { ws, url: this.url, opened: false, ended: false, gap: false, corrupt: false, refusal: null };
    conn.queue = Promise.resolve();
    this._conn = conn;
    conn.openTimer = setTimeout(() => {
      if (!conn.opened && !conn.ended) ws.close();
    }, this.openTimeoutMs);
    // The ws package (Node) tells the status of a refused handshake; browsers never do.
    if (typeof ws.on === "function") {
      ws.on("unexpected-response", (req, res) => this._readRefusal(conn, res));
    }
    ws.addEventListener("open", () => {
      clearTimeout(conn.openTimer);
      conn.opened = true;
      this.connects += 1;
      this.dispatchEvent(detailEvent("open", { url: conn.url }));
    });
    ws.addEventListener("message", (message) => {
      // Decoding may wait (gzip streams): handle messages strictly one after another.
      this._enqueue(conn, () => this._onMessage(conn, message.data));
    });
    ws.addEventListener("error", () => {
      // A close event always follows; it decides what to do.
    });
    ws.addEventListener("close", (event) => {
      clearTimeout(conn.openTimer);
      // Frames already received are applied before the close is acted on.
      this._enqueue(conn, () => this._onClose(conn, event.code, event.reason));
    });
  }

  _enqueue(conn, step) {
    // A step that throws must not stall the ones behind it.
    conn.queue = conn.queue.then(step).catch((error) => this.dispatchEvent(detailEvent("error", { error })));
  }

  _readRefusal(conn, res) {
    const chunks = [];
    res.on("data", (chunk) => chunks.push(chunk));
    res.on("end", () => {
      let body = Buffer.concat(chunks).toString("utf8");
      try {
        body = JSON.parse(body);
      } catch {
        // not JSON: keep the text
      }
      conn.refusal = new StreamRefused(res.statusCode, body, parseRetryAfter(res.headers["retry-after"]));
      conn.ws.terminate(); // ends the handshake: the close event (1006) follows
    });
  }

  async _onMessage(conn, data) {
    if (conn.ended || conn.gap || conn.corrupt || this._closed || typeof data === "string") return;
    let frame;
    try {
      frame = await decodeFrame(data, { maxRawLength: this.maxRawLength });
    } catch (error) {
      // A frame we cannot read: say so, drop this connection and resume (after a backoff).
      this.dispatchEvent(detailEvent("error", { error }));
      conn.corrupt = true;
      conn.ws.close(1000);
      return;
    }
    if (conn.ended || this._closed) return;
    this.frames += 1;
    if (frame.kind === FrameKind.CONTROL) {
      for (const msg of frame.items) this._onControl(msg);
      return;
    }
    const last = this.lastSeq ?? frame.firstSeq - 1;
    if (frame.seq <= last) return; // a duplicate after a resume
    if (frame.firstSeq !== last + 1) {
      // A hole (or an overlap): do not apply it; reconnect and resume from lastSeq.
      conn.gap = true;
      conn.ws.close(1000);
      return;
    }
    this.lastSeq = frame.seq;
    this._backoff = this.initialBackoffMs;
    this._gapsInARow = 0;
    this.dispatchEvent(detailEvent("events", { events: frame.items, firstSeq: frame.firstSeq, seq: frame.seq, codec: frame.codec }));
  }

  _onControl(msg) {
    const type = msg && typeof msg === "object" ? msg.type : undefined;
    if (type === "hello") {
      this.hello = msg;
      if (this.epoch !== msg.epoch || this.lastSeq === null) {
        // A fresh subscription: the stream starts after the current seq.
        this.epoch = msg.epoch;
        this.lastSeq = msg.seq;
      }
      this.dispatchEvent(detailEvent("hello", { message: msg }));
    } else if (type === "reset") {
      this.epoch = msg.epoch;
      this.lastSeq = msg.seq;
      this._backoff = this.initialBackoffMs;
      this.dispatchEvent(detailEvent("reset", { reason: msg.reason ?? "", seq: msg.seq, message: msg }));
    }
    // Control messages of other types are ignored, as the protocol asks.
  }

  _delay(atLeastMs = 0) {
    // Exponential backoff with jitter: between one and two times the current step.
    const delay = Math.max(atLeastMs, this._backoff * (1 + this.random()));
    this._backoff = Math.min(this._backoff * 2, this.maxBackoffMs);
    return delay;
  }

  _schedule(delayMs) {
    if (this._closed) return;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delayMs);
  }

  _giveUp(detail) {
    this._closed = true;
    this.dispatchEvent(detailEvent("closed", { ...detail, fatal: true }));
  }

  _onClose(conn, code, reason) {
    if (conn.ended) return;
    conn.ended = true;
    if (this._conn !== conn || this._closed) return;
    this.lastCloseCode = code;
    const refusal = conn.refusal;
    if (refusal) {
      this.dispatchEvent(detailEvent("refused", { error: refusal, status: refusal.status, body: refusal.body }));
      if (refusal.status !== 429 || !this.reconnect) {
        this._giveUp({ code, reason, error: refusal });
        return;
      }
      // Over a connection cap: wait at least what the server asks, then try again.
      const delayMs = this._delay(refusal.retryAfterMs ?? 0);
      this.dispatchEvent(detailEvent("disconnect", { code, reason, url: conn.url, willRetry: true, delayMs }));
      this._schedule(delayMs);
      return;
    }
    if (FATAL_CLOSE_CODES.has(code)) {
      this.dispatchEvent(detailEvent("disconnect", { code, reason, url: conn.url, willRetry: false }));
      this._giveUp({ code, reason });
      return;
    }
    if (!this.reconnect) {
      this.dispatchEvent(detailEvent("disconnect", { code, reason, url: conn.url, willRetry: false }));
      this._giveUp({ code, reason });
      return;
    }
    if (conn.gap) {
      // Our own close after a hole: resume at once, unless the last resume applied nothing.
      const delayMs = this._gapsInARow++ === 0 ? 0 : this._delay();
      this.dispatchEvent(detailEvent("disconnect", { code, reason, url: conn.url, willRetry: true, delayMs }));
      this._schedule(delayMs);
      return;
    }
    // Unreachable, dropped, restarting or overloaded: another instance can resume it.
    if (!conn.opened || code === ABNORMAL || MOVE_ON_CLOSE_CODES.has(code)) this._nextUrl();
    const delayMs = this._delay();
    this.dispatchEvent(detailEvent("disconnect", { code, reason, url: conn.url, willRetry: true, delayMs }));
    this._schedule(delayMs);
  }
}
