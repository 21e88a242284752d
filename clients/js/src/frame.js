// Frames of protocol version 2 (docs/PROTOCOL.md): a 32-byte big-endian header, then the body.
import { decompress as zstdDecompress } from "fzstd";

export const HEADER_SIZE = 32;
export const PROTOCOL_VERSION = 2;
export const Codec = Object.freeze({ NONE: 0, ZSTD: 1, GZIP: 2 });
export const FrameKind = Object.freeze({ EVENTS: 0, CONTROL: 1 });
export const DEFAULT_MAX_RAW_LENGTH = 64 * 1024 * 1024;

/** A frame that does not follow the protocol; `message` names the first check that failed. */
export class FrameError extends Error {
  constructor(message) {
    super(message);
    this.name = "FrameError";
  }
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError("a frame is an ArrayBuffer or a Uint8Array");
}

function u64(view, offset) {
  const value = view.getBigUint64(offset);
  // Positions of an org's sequence stay far below 2^53; refuse rather than round.
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new FrameError("seq beyond 2^53");
  return Number(value);
}

/** Decode the header alone (step 1 of docs/PROTOCOL.md "Decoding"). */
export function decodeHeader(data) {
  const bytes = toBytes(data);
  if (bytes.byteLength < HEADER_SIZE) throw new FrameError("truncated header");
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint8(0) !== 0x53 || v.getUint8(1) !== 0x43) throw new FrameError("bad magic");
  const version = v.getUint8(2);
  if (version !== PROTOCOL_VERSION) throw new FrameError(`unsupported version ${version}`);
  const codec = v.getUint8(3);
  if (codec > 2) throw new FrameError(`unknown codec ${codec}`);
  const kind = v.getUint8(4);
  if (kind > 1) throw new FrameError(`unknown kind ${kind}`);
  if (v.getUint8(5) !== 0) throw new FrameError("flags must be 0");
  if (v.getUint16(6) !== 0) throw new FrameError("reserved must be 0");
  const seq = u64(v, 8);
  const firstSeq = u64(v, 16);
  if (firstSeq > seq) throw new FrameError("first_seq after seq");
  return {
    codec,
    kind,
    seq,
    firstSeq,
    count: v.getUint32(24),
    rawLength: v.getUint32(28),
    body: bytes.subarray(HEADER_SIZE),
  };
}

// The Frame_Content_Size a zstd frame declares (RFC 8878 3.1.1.1), or null when it has none.
function zstdContentSize(body) {
  if (body.length < 6 || body[0] !== 0x28 || body[1] !== 0xb5 || body[2] !== 0x2f || body[3] !== 0xfd)
    throw new FrameError("not a zstd frame");
  const fhd = body[4];
  const singleSegment = (fhd >> 5) & 1;
  const fcsFlag = fhd >> 6;
  const didSize = [0, 1, 2, 4][fhd & 3];
  const fcsSize = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
  if (fcsSize === 0) return null;
  let at = 5 + (singleSegment ? 0 : 1) + didSize;
  if (body.length < at + fcsSize) throw new FrameError("truncated zstd header");
  let size = 0;
  for (let i = fcsSize - 1; i >= 0; i--) size = size * 256 + body[at + i];
  return fcsSize === 2 ? size + 256 : size;
}

async function gunzip(body, rawLength) {
  const stream = new Blob([body]).stream().pipeThrough(new DecompressionStream("gzip"));
  const reader = stream.getReader();
  const out = new Uint8Array(rawLength);
  let length = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      // Inflate no further than the header admits: a bomb costs at most rawLength bytes.
      if (length + value.byteLength > rawLength) throw new FrameError("length mismatch");
      out.set(value, length);
      length += value.byteLength;
    }
  } catch (err) {
    if (err instanceof FrameError) throw err;
    throw new FrameError(`gzip: ${err.message}`); // also trailing garbage and a truncated stream
  } finally {
    reader.releaseLock();
  }
  if (length !== rawLength) throw new FrameError("length mismatch");
  return out;
}

/** Decompress a frame's body per its codec; checked against the header's raw length. */
export async function decodeBody(header, { maxRawLength = DEFAULT_MAX_RAW_LENGTH } = {}) {
  const { codec, rawLength, body } = header;
  if (rawLength > maxRawLength) throw new FrameError("raw length over the limit");
  if (codec === Codec.NONE) {
    if (body.byteLength !== rawLength) throw new FrameError("length mismatch");
    return body;
  }
  if (codec === Codec.GZIP) return gunzip(body, rawLength);
  // The server's zstd frames declare their size: check it before anything is allocated.
  if (zstdContentSize(body) !== rawLength) throw new FrameError("zstd content size mismatch");
  let out;
  try {
    out = zstdDecompress(body);
  } catch (err) {
    throw new FrameError(`zstd: ${err.message}`);
  }
  if (out.byteLength !== rawLength) throw new FrameError("length mismatch");
  return out;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Decode one frame: `{codec, kind, seq, firstSeq, count, items}`, items being the parsed events
 * (or control messages). Throws FrameError naming the first failed check.
 */
export async function decodeFrame(data, options) {
  const header = decodeHeader(data);
  const raw = await decodeBody(header, options);
  let items;
  try {
    items = JSON.parse(utf8.decode(raw));
  } catch (err) {
    throw new FrameError(`body is not JSON: ${err.message}`);
  }
  if (!Array.isArray(items)) throw new FrameError("body is not an array");
  if (items.length !== header.count) throw new FrameError("count mismatch");
  const { codec, kind, seq, firstSeq, count } = header;
  return { codec, kind, seq, firstSeq, count, items };
}
