/**
 * The wire frames of Bellhop protocol v1 (docs/PROTOCOL.md), as TypeScript types.
 *
 * Pure types plus a few guards: no IO. Every optional field here is omitted on the wire when it
 * has no value (never `null`). Fields marked "newer nodes" are sent only by nodes that have them;
 * the SDK works without them.
 */

/** An offset `<ms>-<seq>`: opaque, but ordered (see {@link compareOffsets}). */
export type Offset = string;

/** A request id: a non-negative integer the reply echoes. */
export type RequestId = number;

export type Role = "guest" | "staff" | "manager" | "admin" | "service";

export type Priority = "low" | "normal" | "high" | "urgent";

/** Any JSON value (what a payload may be). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "too_large"
  | "rate_limited"
  | "unavailable"
  | "internal";

/** A stored message (PROTOCOL.md §5). */
export interface Envelope {
  messageId: string;
  event: string;
  /** The publisher's property. */
  namespace: string;
  channel: string;
  payload: Json;
  /** RFC 3339, UTC, milliseconds. */
  timestamp: string;
  sender: { id: string; role: Role | string };
  priority: Priority;
  correlationId?: string;
}

// ---------------------------------------------------------------------------------------------
// Client frames (§3)

export interface AuthFrame {
  type: "auth";
  id?: RequestId;
  token: string;
}

export interface SubscribeFrame {
  type: "subscribe";
  id?: RequestId;
  channel: string;
  since?: Offset;
}

export interface UnsubscribeFrame {
  type: "unsubscribe";
  id?: RequestId;
  channel: string;
}

export interface PublishFrame {
  type: "publish";
  id?: RequestId;
  channel: string;
  event: string;
  payload?: Json;
  priority?: Priority;
  correlationId?: string;
  /** 1-64 characters of `[A-Za-z0-9_.:-]` (newer nodes de-duplicate by it; older ones ignore it). */
  idempotencyKey?: string;
}

export interface HistoryFrame {
  type: "history";
  id?: RequestId;
  channel: string;
  since?: Offset;
  /** 1-100, default 50. */
  limit?: number;
}

export interface PresenceFrame {
  type: "presence";
  id?: RequestId;
  channel: string;
}

export interface TypingFrame {
  type: "typing";
  id?: RequestId;
  channel: string;
}

export interface ReadFrame {
  type: "read";
  id?: RequestId;
  channel: string;
  offset: Offset;
}

export interface PingFrame {
  type: "ping";
  id?: RequestId;
}

export type ClientFrame =
  | AuthFrame
  | SubscribeFrame
  | UnsubscribeFrame
  | PublishFrame
  | HistoryFrame
  | PresenceFrame
  | TypingFrame
  | ReadFrame
  | PingFrame;

// ---------------------------------------------------------------------------------------------
// Server frames (§4)

export interface WelcomeFrame {
  type: "welcome";
  /** The `auth` frame's id; absent when the upgrade carried the token. */
  id?: RequestId;
  sessionId: string;
  node: string;
  userId: string;
  role: Role;
  property: string;
  heartbeatSeconds: number;
}

export interface SubscribedFrame {
  type: "subscribed";
  id?: RequestId;
  channel: string;
  /** The channel's newest offset when the subscription started. */
  offset: Offset;
  /** `false`: messages after `since` may be missing. */
  recovered: boolean;
  unread: number;
}

export interface UnsubscribedFrame {
  type: "unsubscribed";
  /** Absent when the server ended the subscription (a re-authentication narrowed the rights). */
  id?: RequestId;
  channel: string;
}

/** The ack of a `publish` (with `messageId`) or of a `read` (with `unread`). */
export interface AckFrame {
  type: "ack";
  id?: RequestId;
  messageId?: string;
  offset: Offset;
  unread?: number;
  /** Newer nodes: this publish repeated an idempotency key; nothing new was stored. */
  duplicate?: boolean;
}

export interface HistoryEntry {
  offset: Offset;
  message: Envelope;
}

export interface HistoryReplyFrame {
  type: "history";
  id?: RequestId;
  channel: string;
  messages: HistoryEntry[];
  /** Newer nodes: the page was cut; ask again with `since` = the last offset. */
  more?: boolean;
}

export interface PresenceReplyFrame {
  type: "presence";
  id?: RequestId;
  channel: string;
  users: string[];
}

export interface MessageFrame {
  type: "message";
  channel: string;
  offset: Offset;
  message: Envelope;
}

export interface JoinFrame {
  type: "join";
  channel: string;
  userId: string;
}

export interface LeaveFrame {
  type: "leave";
  channel: string;
  userId: string;
}

export interface TypingNoticeFrame {
  type: "typing";
  channel: string;
  userId: string;
}

export interface ErrorFrame {
  type: "error";
  id?: RequestId;
  code: ErrorCode;
  message: string;
  retryAfterMs?: number;
}

export interface PongFrame {
  type: "pong";
  id?: RequestId;
}

export type ServerFrame =
  | WelcomeFrame
  | SubscribedFrame
  | UnsubscribedFrame
  | AckFrame
  | HistoryReplyFrame
  | PresenceReplyFrame
  | MessageFrame
  | JoinFrame
  | LeaveFrame
  | TypingNoticeFrame
  | ErrorFrame
  | PongFrame;

export type ServerFrameType = ServerFrame["type"];
export type ClientFrameType = ClientFrame["type"];

/** The server frame types, for checks against the schema. */
export const SERVER_FRAME_TYPES: readonly ServerFrameType[] = [
  "welcome",
  "subscribed",
  "unsubscribed",
  "ack",
  "history",
  "presence",
  "message",
  "join",
  "leave",
  "typing",
  "error",
  "pong",
];

/** The client frame types, for checks against the schema. */
export const CLIENT_FRAME_TYPES: readonly ClientFrameType[] = [
  "auth",
  "subscribe",
  "unsubscribe",
  "publish",
  "history",
  "presence",
  "typing",
  "read",
  "ping",
];

/** WebSocket close codes the server sends (PROTOCOL.md §13). */
export const CloseCode = {
  normal: 1000,
  protocolError: 1002,
  abnormal: 1006,
  invalidPayload: 1007,
  policy: 1008,
  tooLarge: 1009,
  internal: 1011,
  restart: 1012,
  tryAgainLater: 1013,
  unauthorized: 4001,
  heartbeatTimeout: 4002,
  slowConsumer: 4008,
} as const;

/** The MessagePack subprotocol. */
export const MSGPACK_SUBPROTOCOL = "bellhop.v1.msgpack";

const OFFSET = /^(\d{1,20})-(\d{1,20})$/;

/** Whether `s` has the shape of an offset (`<ms>-<seq>`). */
export function isOffset(s: unknown): s is Offset {
  return typeof s === "string" && OFFSET.test(s);
}

/**
 * Orders two offsets of one channel as the server does: by `ms`, then `seq`, as integers.
 * Negative when `a` is older, 0 when equal, positive when newer. Throws on a malformed offset.
 */
export function compareOffsets(a: Offset, b: Offset): number {
  const ma = OFFSET.exec(a);
  const mb = OFFSET.exec(b);
  if (!ma || !mb) throw new TypeError(`not an offset: ${JSON.stringify(ma ? b : a)}`);
  const ms = BigInt(ma[1]!) - BigInt(mb[1]!);
  if (ms !== 0n) return ms < 0n ? -1 : 1;
  const seq = BigInt(ma[2]!) - BigInt(mb[2]!);
  return seq === 0n ? 0 : seq < 0n ? -1 : 1;
}

const IDEMPOTENCY_KEY = /^[A-Za-z0-9_.:-]{1,64}$/;

/** Whether `s` is a valid idempotency key (1-64 characters of `[A-Za-z0-9_.:-]`). */
export function isIdempotencyKey(s: unknown): s is string {
  return typeof s === "string" && IDEMPOTENCY_KEY.test(s);
}

const EVENT = /^[A-Z][A-Z0-9_]{0,63}$/;

/** Whether `s` is a valid event name (`UPPER_SNAKE`, at most 64 characters). */
export function isEventName(s: unknown): s is string {
  return typeof s === "string" && EVENT.test(s);
}

/**
 * Checks the shape of a decoded server frame just enough for the client to act on it safely
 * (a `type` it knows and the fields it reads). Returns the frame typed, or `undefined`.
 */
export function asServerFrame(v: unknown): ServerFrame | undefined {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return undefined;
  const f = v as Record<string, unknown>;
  if (f.id !== undefined && typeof f.id !== "number") return undefined;
  const str = (k: string) => typeof f[k] === "string";
  switch (f.type) {
    case "welcome":
      return str("sessionId") && str("userId") ? (f as unknown as WelcomeFrame) : undefined;
    case "subscribed":
      return str("channel") && isOffset(f.offset) && typeof f.recovered === "boolean"
        ? (f as unknown as SubscribedFrame)
        : undefined;
    case "unsubscribed":
      return str("channel") ? (f as unknown as UnsubscribedFrame) : undefined;
    case "ack":
      return isOffset(f.offset) ? (f as unknown as AckFrame) : undefined;
    case "history":
      return str("channel") && Array.isArray(f.messages) ? (f as unknown as HistoryReplyFrame) : undefined;
    case "presence":
      return str("channel") && Array.isArray(f.users) ? (f as unknown as PresenceReplyFrame) : undefined;
    case "message":
      return str("channel") && isOffset(f.offset) && typeof f.message === "object" && f.message !== null
        ? (f as unknown as MessageFrame)
        : undefined;
    case "join":
    case "leave":
    case "typing":
      return str("channel") && str("userId") ? (f as unknown as JoinFrame) : undefined;
    case "error":
      return str("code") && str("message") ? (f as unknown as ErrorFrame) : undefined;
    case "pong":
      return f as unknown as PongFrame;
    default:
      return undefined;
  }
}
