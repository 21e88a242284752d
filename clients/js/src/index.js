// @streamcore/client: the realtime stream of streamcore (protocol 2) for browsers and Node.
export {
  Codec,
  DEFAULT_MAX_RAW_LENGTH,
  decodeBody,
  decodeFrame,
  decodeHeader,
  FrameError,
  FrameKind,
  HEADER_SIZE,
  PROTOCOL_VERSION,
} from "./frame.js";
export {
  FATAL_CLOSE_CODES,
  MOVE_ON_CLOSE_CODES,
  parseRetryAfter,
  StreamClient,
  StreamRefused,
  SUBPROTOCOL,
} from "./client.js";
