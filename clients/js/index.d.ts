// Types of @streamcore/client (hand-written; the package ships its ES modules as they are).

export declare const HEADER_SIZE: 32;
export declare const PROTOCOL_VERSION: 2;
export declare const DEFAULT_MAX_RAW_LENGTH: number;
export declare const SUBPROTOCOL: "streamcore.v2";
export declare const FATAL_CLOSE_CODES: ReadonlySet<number>;
export declare const MOVE_ON_CLOSE_CODES: ReadonlySet<number>;

export declare const Codec: { readonly NONE: 0; readonly ZSTD: 1; readonly GZIP: 2 };
export type Codec = (typeof Codec)[keyof typeof Codec];
export declare const FrameKind: { readonly EVENTS: 0; readonly CONTROL: 1 };
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
export type CodecName = "zstd" | "gzip" | "none";

/** A frame that does not follow the protocol; `message` names the first check that failed. */
export declare class FrameError extends Error {}

export interface FrameHeader {
  codec: Codec;
  kind: FrameKind;
  /** The newest position of the org's sequence this frame covers. */
  seq: number;
  /** The oldest position it covers. */
  firstSeq: number;
  count: number;
  rawLength: number;
  body: Uint8Array;
}

export interface Frame {
  codec: Codec;
  kind: FrameKind;
  seq: number;
  firstSeq: number;
  count: number;
  /** The events (kind 0) or control messages (kind 1), parsed. */
  items: unknown[];
}

export interface DecodeOptions {
  /** Refuse a frame whose header announces a larger body (default 64 MiB). */
  maxRawLength?: number;
}

export declare function decodeHeader(data: ArrayBuffer | ArrayBufferView): FrameHeader;
export declare function decodeBody(header: FrameHeader, options?: DecodeOptions): Promise<Uint8Array>;
export declare function decodeFrame(data: ArrayBuffer | ArrayBufferView, options?: DecodeOptions): Promise<Frame>;
/** The delay a Retry-After header asks for, in ms; null when absent or unreadable. */
export declare function parseRetryAfter(value: string | null | undefined, now?: number): number | null;

/** The body the API answers an error with. */
export interface ApiErrorBody {
  error: { code: string; message: string; details?: unknown };
}

/** The server refused the stream at the handshake (known only where the status is visible: Node's ws). */
export declare class StreamRefused extends Error {
  readonly status: number;
  readonly body: ApiErrorBody | string;
  readonly retryAfterMs: number | null;
}

export interface HelloMessage {
  type: "hello";
  channel: string;
  epoch: string;
  seq: number;
  codec: CodecName;
  connection_id: string;
  protocol: 2;
}

export type ResetReason =
  | "history_expired"
  | "epoch_changed"
  | "unknown_seq"
  | "history_unavailable"
  | "history_lost"
  | "events_lost"
  | (string & {});

export interface ResetMessage {
  type: "reset";
  channel: string;
  epoch: string;
  seq: number;
  reason: ResetReason;
}

/** One event as the server published it, e.g. {type: "expense.created", orgId, data}. */
export interface StreamEvent {
  type: string;
  orgId: number;
  key?: string;
  conflatable?: false;
  propertyId?: number;
  data: unknown;
  [field: string]: unknown;
}

export interface StreamClientEventMap {
  /** An applied events frame: its events in order (positions firstSeq..seq). */
  events: CustomEvent<{ events: StreamEvent[]; firstSeq: number; seq: number; codec: Codec }>;
  /** Events were lost to this client: drop what was derived from the stream, reload over HTTP. */
  reset: CustomEvent<{ reason: ResetReason; seq: number; message: ResetMessage }>;
  hello: CustomEvent<{ message: HelloMessage }>;
  open: CustomEvent<{ url: string }>;
  /** A connection ended; `willRetry` says whether another follows after `delayMs`. */
  disconnect: CustomEvent<{ code: number; reason: string; url: string; willRetry: boolean; delayMs?: number }>;
  /** A handshake answered with an HTTP status (429 is retried, others end the client). */
  refused: CustomEvent<{ error: StreamRefused; status: number; body: ApiErrorBody | string }>;
  /** A frame that could not be decoded, or a failure to build the socket or get the token. */
  error: CustomEvent<{ error: unknown }>;
  /** The client stopped: closed by the application, or gave up (`fatal`). */
  closed: CustomEvent<{ code: number; reason: string; fatal: boolean; error?: StreamRefused }>;
}

/** What the client needs of a WebSocket: the WHATWG API (browsers, Node 22+, or the ws package). */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): WebSocket;
}

export interface StreamClientOptions {
  codec?: CodecName;
  /** Only these properties' events (property ids of the caller's org). */
  properties?: number[];
  /** Reconnect after drops, 1001/1012/1013 and 429 (default true). */
  reconnect?: boolean;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Give up on a handshake that has not completed after this long (default 10 s). */
  openTimeoutMs?: number;
  maxRawLength?: number;
  /** The WebSocket class (default: globalThis.WebSocket). In Node 20, pass the ws package's. */
  WebSocket?: WebSocketConstructor;
  /** Source of jitter in [0, 1) (default Math.random). */
  random?: () => number;
}

export declare class StreamClient extends EventTarget {
  /**
   * @param url the stream's ws(s):// URL, or one per instance (it moves on when one is away)
   * @param token the bearer token, or a function giving the current one before each connect
   */
  constructor(url: string | string[], token: string | (() => string | Promise<string>), options?: StreamClientOptions);
  readonly urls: string[];
  /** The URL the current (or next) connection uses. */
  readonly url: string;
  readonly connected: boolean;
  /** The epoch of the org's sequence, from hello or reset. */
  epoch: string | null;
  /** The last position applied: where a reconnect resumes. */
  lastSeq: number | null;
  hello: HelloMessage | null;
  connects: number;
  frames: number;
  lastCloseCode: number | null;
  /** Connect; events follow. Returns this. */
  start(): this;
  /** Stop for good. */
  close(): void;
  /** The handshake URL with codec, properties and the resume point. */
  streamUrl(): string;
  addEventListener<K extends keyof StreamClientEventMap>(
    type: K,
    listener: (event: StreamClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof StreamClientEventMap>(
    type: K,
    listener: (event: StreamClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}
