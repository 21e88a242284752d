// Compiled (never run) by `npm run typecheck`: the hand-written index.d.ts describes the API an
// application uses, and rejects what it should.
import {
  Codec,
  decodeFrame,
  type Frame,
  FrameKind,
  StreamClient,
  StreamRefused,
  type StreamEvent,
} from "@streamcore/client";

const client = new StreamClient(["ws://a/v2/realtime/stream", "ws://b/v2/realtime/stream"], async () => "token", {
  codec: "gzip",
  properties: [1, 2],
  initialBackoffMs: 10,
  WebSocket,
});
client.addEventListener("events", (e) => {
  const events: StreamEvent[] = e.detail.events;
  const range: [number, number] = [e.detail.firstSeq, e.detail.seq];
  const codec: Codec = e.detail.codec;
  void events, range, codec;
});
client.addEventListener("reset", (e) => {
  const reason: string = e.detail.reason;
  const epoch: string = e.detail.message.epoch;
  void reason, epoch;
});
client.addEventListener("closed", (e) => {
  if (e.detail.fatal && e.detail.error instanceof StreamRefused) {
    const status: number = e.detail.error.status;
    void status;
  }
});
const started: StreamClient = client.start();
const at: number | null = started.lastSeq;
void at;

async function decode(data: ArrayBuffer): Promise<unknown[]> {
  const frame: Frame = await decodeFrame(data, { maxRawLength: 1 << 20 });
  return frame.kind === FrameKind.EVENTS ? frame.items : [];
}
void decode;

// @ts-expect-error: not a codec
new StreamClient("ws://a", "t", { codec: "brotli" });
// @ts-expect-error: a token is a string or a function
new StreamClient("ws://a", 42);
// @ts-expect-error: an "events" detail has no "items"
client.addEventListener("events", (e) => e.detail.items);
