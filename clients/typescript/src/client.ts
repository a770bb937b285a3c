/**
 * The Bellhop client: one WebSocket at a time to one of the node URLs, a connection state
 * machine (`disconnected` -> `connecting` -> `connected`, `closed` at the end), authentication
 * with an `auth` frame and re-authentication before the token expires, reconnects decided by the
 * close code with full-jitter backoff, subscriptions that resume from their offsets, and
 * requests (publish, history, presence, read) that wait for a connection and retry what may be
 * retried.
 *
 * It never reconnects in a tight loop (every reconnect waits a drawn delay), never sends a frame
 * over the node's 64 KiB limit, and never resends a publish without its idempotency key.
 */

import { backoffDelay, DEFAULT_BACKOFF, planAfterClose } from "./backoff.js";
import type { Codec, CodecName } from "./codec.js";
import { codecFor, decodeFrame, encodedSize } from "./codec.js";
import { Emitter } from "./emitter.js";
import { BellhopError } from "./errors.js";
import type {
  AckFrame,
  ClientFrame,
  ErrorFrame,
  HistoryReplyFrame,
  Json,
  MessageFrame,
  Offset,
  PresenceReplyFrame,
  PublishFrame,
  ServerFrame,
  SubscribedFrame,
  WelcomeFrame,
} from "./frames.js";
import { asServerFrame, CloseCode, isIdempotencyKey } from "./frames.js";
import type {
  HistoryOptions,
  HistoryPage,
  MessageContext,
  PublishOptions,
  PublishResult,
  ReadResult,
  SubscriptionHost,
  SubscriptionOptions,
} from "./subscription.js";
import { Subscription } from "./subscription.js";
import { refreshDelayMs, tokenTimes } from "./token.js";

/** The node's frame and message limit (PROTOCOL.md §10). */
export const MAX_FRAME_BYTES = 65_536;

export type ConnectionState = "disconnected" | "connecting" | "connected" | "closed";

/** What the client needs of a WebSocket: the browser's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drop the socket without a closing handshake. */
  terminate?: () => void;
}

export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: Record<string, unknown>,
) => WebSocketLike;

export interface ReconnectOptions {
  /** Ceiling of the first backoff delay (ms, default 500). */
  baseMs?: number;
  /** Largest backoff delay (ms, default 20,000). */
  capMs?: number;
  /** After a 1012 (drain): reconnect within `[0, drainJitterMs)` (default 1,000). */
  drainJitterMs?: number;
}

export interface ClientOptions {
  /** One node URL or several (`ws://host:3001/ws`); after a failure the next one is tried. */
  url: string | string[];
  /** A token, for a short-lived page; it cannot be refreshed. */
  token?: string;
  /**
   * Called for a token when connecting (again) and before the current one expires. Give this
   * for anything that lives longer than a token. Throw or return `""` when the user has none
   * (the client then stops with an `unauthorized` error).
   */
  getToken?: () => Promise<string>;
  /** `json` (default) or `msgpack` (subprotocol `bellhop.v1.msgpack`). */
  codec?: CodecName;
  reconnect?: ReconnectOptions;
  /** A reply must arrive within this (ms, default 10,000). */
  requestTimeoutMs?: number;
  /** Opening the socket and authenticating must finish within this (ms, default 10,000). */
  connectTimeoutMs?: number;
  /** Send a `ping` this often while connected, to notice a dead connection (ms, default 25,000; 0: never). */
  pingIntervalMs?: number;
  /** A `pong` must come back within this (ms, default 10,000). */
  pongTimeoutMs?: number;
  /** A publish, retries included, gives up after this (ms, default 60,000). */
  publishDeadlineMs?: number;
  /** At most this many sends of one publish (default 10). */
  publishMaxAttempts?: number;
  /** At most one `typing` per channel this often (ms, default 3,000). */
  typingThrottleMs?: number;
  /** Re-authenticate this long before `exp` (ms; default: a minute, or a tenth of the token's lifetime if shorter). */
  tokenRefreshLeadMs?: number;
  /** A WebSocket class; default: the global one, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** Random source for backoff jitter (tests fix it). */
  random?: () => number;
}

export interface StateContext {
  oldState: ConnectionState;
  newState: ConnectionState;
}

/** The session a `welcome` opened: the same fields (without `type` and `id`). */
export type Session = Omit<WelcomeFrame, "type" | "id">;

/** The `connected` event: the node's URL and the session it opened. */
export interface ConnectedContext extends Session {
  url: string;
}

export interface ConnectingContext {
  /** `connect_called` or `transport_closed`. */
  code: string;
  reason: string;
}

export interface ReconnectingContext {
  /** The close code that ended the last connection or attempt (1006 for a network failure). */
  code: number;
  reason: string;
  /** How long the client waits before the next attempt. */
  delayMs: number;
  /** Consecutive failed attempts before this one (0 after a connection that had been up). */
  attempt: number;
  /** The URL the next attempt goes to. */
  url: string;
}

export interface DisconnectedContext {
  /** The close code, or 1000 for `disconnect()`. */
  code: number;
  reason: string;
}

export interface ErrorContext {
  /** `transport`, `connect`, `token`, `refresh`, `server` (an `error` frame without id), `protocol`. */
  type: string;
  error: BellhopError;
}

export interface RetryContext {
  /** The request type being retried (`publish`, `history`, ...). */
  request: ClientFrame["type"];
  /** Sends so far. */
  attempt: number;
  /** Why the last send failed. */
  error: BellhopError;
  /** How long the client waits before sending again (then also for a connection, if needed). */
  delayMs: number;
}

export type ClientEvents = {
  state: (ctx: StateContext) => void;
  connecting: (ctx: ConnectingContext) => void;
  connected: (ctx: ConnectedContext) => void;
  /** A reconnect is scheduled (after every failed attempt or lost connection). */
  reconnecting: (ctx: ReconnectingContext) => void;
  disconnected: (ctx: DisconnectedContext) => void;
  closed: () => void;
  error: (ctx: ErrorContext) => void;
  /** The connection re-authenticated with a fresh token (no reconnect). */
  token: (ctx: { exp: number | undefined }) => void;
  /** Every message any subscription delivered. */
  message: (ctx: MessageContext) => void;
  /** A request failed in a way worth retrying and will be sent again. */
  retry: (ctx: RetryContext) => void;
};

interface Pending {
  /** The request's type. */
  request: ClientFrame["type"];
  resolve: (frame: ServerFrame) => void;
  reject: (error: BellhopError) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** One WebSocket and what belongs to it; callbacks of a connection that is no longer current do nothing. */
interface Conn {
  ws: WebSocketLike;
  url: string;
  pending: Map<number, Pending>;
  welcome: WelcomeFrame | undefined;
  /** The token the connection authenticated with. */
  token: string;
  /** An `error` frame received before the close (tells why: token expired, auth failed). */
  lastError: ErrorFrame | undefined;
  /** Frames received so far: a timeout with nothing received since the request means a dead connection. */
  received: number;
  timers: Set<ReturnType<typeof setTimeout>>;
}

interface Waiter {
  resolve: (conn: Conn) => void;
  reject: (error: BellhopError) => void;
}

interface CallPolicy {
  retry: boolean;
  maxAttempts: number;
  deadlineMs: number;
}

function newIdempotencyKey(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c?.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

let wsPackage: Promise<WebSocketConstructor> | undefined;

/** The global WebSocket (browsers, Node 22+), else the `ws` package (Node 20). */
function defaultWebSocket(): Promise<{ ctor: WebSocketConstructor; isWsPackage: boolean }> {
  const g = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (g) return Promise.resolve({ ctor: g, isWsPackage: false });
  wsPackage ??= import("ws").then((m) => (m.WebSocket ?? m.default) as unknown as WebSocketConstructor);
  return wsPackage.then((ctor) => ({ ctor, isWsPackage: true }));
}

const OPEN = 1;
/** The longest delay setTimeout honours. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class BellhopClient extends Emitter<ClientEvents> implements SubscriptionHost {
  readonly #urls: string[];
  readonly #codec: Codec;
  readonly #getToken: (() => Promise<string>) | undefined;
  readonly #opts: Required<
    Omit<ClientOptions, "url" | "token" | "getToken" | "codec" | "reconnect" | "WebSocket" | "tokenRefreshLeadMs">
  > & { tokenRefreshLeadMs: number | undefined };
  readonly #backoff: { baseMs: number; capMs: number; drainJitterMs: number };
  readonly #WebSocket: WebSocketConstructor | undefined;

  #state: ConnectionState = "disconnected";
  #conn: Conn | undefined;
  /** Bumped by every attempt and by disconnect(): an older attempt that wakes up does nothing. */
  #epoch = 0;
  #urlIndex = 0;
  /** Consecutive failed attempts (reset by a welcome). */
  #attempts = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #token: string | undefined;
  /** After a 4001: the refused token; `getToken()` must give another. */
  #refusedToken: string | undefined;
  #nextId = 1;
  #waiters: Waiter[] = [];
  #subs = new Map<string, Subscription>();
  #lastTyping = new Map<string, number>();
  #sleeps = new Set<{ timer: ReturnType<typeof setTimeout>; reject: (e: BellhopError) => void }>();

  constructor(options: ClientOptions) {
    super();
    this.#urls = Array.isArray(options.url) ? [...options.url] : [options.url];
    if (this.#urls.length === 0) throw new TypeError("BellhopClient: url is empty");
    if (options.token === undefined && options.getToken === undefined) {
      throw new TypeError("BellhopClient: give token or getToken");
    }
    this.#token = options.token;
    this.#getToken = options.getToken;
    this.#codec = codecFor(options.codec ?? "json");
    this.#WebSocket = options.WebSocket;
    this.#backoff = {
      baseMs: options.reconnect?.baseMs ?? DEFAULT_BACKOFF.baseMs,
      capMs: options.reconnect?.capMs ?? DEFAULT_BACKOFF.capMs,
      drainJitterMs: options.reconnect?.drainJitterMs ?? 1_000,
    };
    this.#opts = {
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      publishDeadlineMs: options.publishDeadlineMs ?? 60_000,
      publishMaxAttempts: options.publishMaxAttempts ?? 10,
      typingThrottleMs: options.typingThrottleMs ?? 3_000,
      tokenRefreshLeadMs: options.tokenRefreshLeadMs,
      random: options.random ?? Math.random,
    };
  }

  // -- state ------------------------------------------------------------------------------

  get state(): ConnectionState {
    return this.#state;
  }

  get isConnected(): boolean {
    return this.#state === "connected";
  }

  /** The current connection's `welcome` (session, node, user), while connected. */
  get session(): Session | undefined {
    if (this.#state !== "connected" || !this.#conn?.welcome) return undefined;
    const { type: _t, id: _i, ...rest } = this.#conn.welcome;
    return rest;
  }

  /** The URL of the current (or next) connection. */
  get url(): string {
    return this.#conn?.url ?? this.#urls[this.#urlIndex % this.#urls.length]!;
  }

  get codec(): CodecName {
    return this.#codec.name;
  }

  /** The subprotocol the node selected on the current connection (`bellhop.v1.msgpack` or `""`). */
  get protocol(): string {
    return this.#conn?.ws.protocol ?? "";
  }

  /** Opens the connection (and keeps it open until `disconnect()` or a close that forbids reconnecting). */
  connect(): void {
    if (this.#state === "closed") throw new BellhopError("closed", "the client is closed");
    if (this.#state !== "disconnected") return;
    this.#attempts = 0;
    this.#setState("connecting");
    this.emit("connecting", { code: "connect_called", reason: "connect called" });
    void this.#attempt();
  }

  /** Closes the connection; subscriptions wait (`subscribing`) and resume on the next `connect()`. */
  disconnect(): void {
    if (this.#state === "disconnected" || this.#state === "closed") return;
    this.#toDisconnected(CloseCode.normal, "disconnect called", "client_disconnected");
  }

  /**
   * Resolves once connected (at once if it is); rejects if the client stops (`disconnected`,
   * `closed`) or `timeoutMs` passes first.
   */
  ready(timeoutMs: number = this.#opts.connectTimeoutMs): Promise<void> {
    if (this.#state === "connected") return Promise.resolve();
    if (this.#state !== "connecting") return Promise.reject(new BellhopError(this.#state === "closed" ? "closed" : "disconnected", `the client is ${this.#state}`));
    return new Promise<void>((resolve, reject) => {
      const done = (e?: BellhopError) => {
        clearTimeout(timer);
        off();
        if (e) reject(e);
        else resolve();
      };
      const off = this.on("state", ({ newState }) => {
        if (newState === "connected") done();
        else if (newState !== "connecting") done(new BellhopError(newState === "closed" ? "closed" : "disconnected", `the client is ${newState}`));
      });
      const timer = setTimeout(() => done(new BellhopError("timeout", `not connected within ${timeoutMs} ms`)), Math.min(timeoutMs, MAX_TIMER_MS));
    });
  }

  /** Disconnects for good: subscriptions end, the client cannot connect again. */
  close(): void {
    if (this.#state === "closed") return;
    this.disconnect();
    for (const sub of this.#subs.values()) sub._ended("client_closed", "client closed");
    this.#subs.clear();
    this.#setState("closed");
    this.emit("closed");
  }

  // -- subscriptions ----------------------------------------------------------------------

  /** A new subscription object (not yet subscribed). One per channel. */
  newSubscription(channel: string, options?: SubscriptionOptions): Subscription {
    if (this.#subs.has(channel)) throw new Error(`already have a subscription to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this.#subs.set(channel, sub);
    return sub;
  }

  getSubscription(channel: string): Subscription | undefined {
    return this.#subs.get(channel);
  }

  subscriptions(): Subscription[] {
    return [...this.#subs.values()];
  }

  /** The channel's subscription (created if needed), subscribed. */
  subscribe(channel: string, options?: SubscriptionOptions): Subscription {
    const sub = this.#subs.get(channel) ?? this.newSubscription(channel, options);
    sub.subscribe();
    return sub;
  }

  /** Unsubscribes and forgets the subscription. */
  removeSubscription(sub: Subscription): void {
    sub.unsubscribe();
    if (this.#subs.get(sub.channel) === sub) this.#subs.delete(sub.channel);
  }

  /** @internal */
  _subscribe(sub: Subscription): void {
    const conn = this.#readyConn();
    if (conn) this.#sendSubscribe(conn, sub);
  }

  /** @internal */
  _unsubscribe(sub: Subscription): void {
    const conn = this.#readyConn();
    sub._generation += 1;
    if (!conn || !sub._serverMayHold) return;
    sub._serverMayHold = false;
    this.#request(conn, { type: "unsubscribe", channel: sub.channel }, this.#opts.requestTimeoutMs).catch(() => {
      // "not subscribed" or a lost connection: either way the node holds nothing for it now.
    });
  }

  /** @internal */
  _delivered(ctx: MessageContext): void {
    this.emit("message", ctx);
  }

  // -- requests ---------------------------------------------------------------------------

  /**
   * Publishes and resolves with the ack once the node stored the message. Every publish carries
   * an idempotency key (a random one unless given), and every retry reuses it: after
   * `unavailable`, `rate_limited` or `internal` (waiting `retryAfterMs`), a timeout, or a lost
   * connection (once reconnected). A node that knows the key answers a repeat with the original
   * ack (`duplicate: true`).
   */
  async publish(channel: string, event: string, payload?: Json, options: PublishOptions = {}): Promise<PublishResult> {
    const idempotencyKey = options.idempotencyKey ?? newIdempotencyKey();
    if (!isIdempotencyKey(idempotencyKey)) {
      throw new BellhopError("bad_request", "idempotencyKey must be 1-64 characters of [A-Za-z0-9_.:-]");
    }
    const frame: PublishFrame = { type: "publish", channel, event, idempotencyKey };
    if (payload !== undefined) frame.payload = payload;
    if (options.priority !== undefined) frame.priority = options.priority;
    if (options.correlationId !== undefined) frame.correlationId = options.correlationId;
    const { reply, attempts } = await this.#call(frame, {
      retry: true,
      maxAttempts: this.#opts.publishMaxAttempts,
      deadlineMs: options.deadlineMs ?? this.#opts.publishDeadlineMs,
    });
    const ack = this.#expect<AckFrame>(reply, "ack");
    if (ack.messageId === undefined) throw new BellhopError("internal", "publish ack without messageId");
    return { messageId: ack.messageId, offset: ack.offset, duplicate: ack.duplicate === true, idempotencyKey, attempts };
  }

  /** One page of stored messages, oldest first. */
  async history(channel: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    const frame: ClientFrame = { type: "history", channel };
    if (options.since !== undefined) frame.since = options.since;
    if (options.limit !== undefined) frame.limit = options.limit;
    const { reply } = await this.#call(frame, this.#readPolicy());
    const h = this.#expect<HistoryReplyFrame>(reply, "history");
    return { channel: h.channel, messages: h.messages, more: h.more === true };
  }

  /**
   * Every stored message after `since` (default: from the oldest retained), page by page: asks
   * again with `since` = the last offset while the node says `more` (or, with a node that does
   * not send `more`, while pages come back full).
   */
  async *historyPages(
    channel: string,
    options: HistoryOptions & { maxPages?: number } = {},
  ): AsyncGenerator<HistoryPage> {
    const limit = options.limit ?? 100;
    let since = options.since ?? "0-0";
    for (let page = 0; page < (options.maxPages ?? Number.POSITIVE_INFINITY); page++) {
      const p = await this.history(channel, { since, limit });
      const last = p.messages.at(-1);
      if (!last) return;
      yield p;
      if (!p.more && p.messages.length < limit) return;
      since = last.offset;
    }
  }

  /** The user ids subscribed to the channel now. */
  async presence(channel: string): Promise<string[]> {
    const { reply } = await this.#call({ type: "presence", channel }, this.#readPolicy());
    return this.#expect<PresenceReplyFrame>(reply, "presence").users;
  }

  /** Sets the read marker (it never moves back); resolves with the saved marker and the unread count. */
  async read(channel: string, offset: Offset): Promise<ReadResult> {
    const { reply } = await this.#call({ type: "read", channel, offset }, this.#readPolicy());
    const ack = this.#expect<AckFrame>(reply, "ack");
    return { offset: ack.offset, unread: ack.unread ?? 0 };
  }

  /**
   * Tells the channel's other users you are typing, at most once per `typingThrottleMs` per
   * channel. Returns `false` when it was throttled or the client is not connected.
   */
  typing(channel: string): boolean {
    const conn = this.#readyConn();
    if (!conn) return false;
    const now = Date.now();
    const last = this.#lastTyping.get(channel);
    if (last !== undefined && now - last < this.#opts.typingThrottleMs) return false;
    try {
      this.#send(conn, { type: "typing", channel });
    } catch {
      return false;
    }
    this.#lastTyping.set(channel, now);
    return true;
  }

  /** Round trip to the node in ms. */
  async ping(): Promise<number> {
    const started = Date.now();
    await this.#call({ type: "ping" }, this.#readPolicy());
    return Date.now() - started;
  }

  // -- connecting -------------------------------------------------------------------------

  async #attempt(): Promise<void> {
    const epoch = ++this.#epoch;
    const stale = () => epoch !== this.#epoch || this.#state !== "connecting";
    let token: string;
    try {
      token = await this.#tokenForConnect();
    } catch (e) {
      if (stale()) return;
      const error = e instanceof BellhopError ? e : new BellhopError("token", `getToken() failed: ${String(e)}`);
      this.emit("error", { type: "token", error });
      if (error.code === "unauthorized") {
        this.#toDisconnected(CloseCode.unauthorized, error.message, "transport_closed");
      } else {
        this.#scheduleReconnect(CloseCode.abnormal, error.message, "backoff", false);
      }
      return;
    }
    let ws: WebSocketLike;
    const url = this.#urls[this.#urlIndex % this.#urls.length]!;
    try {
      const { ctor, isWsPackage } = this.#WebSocket
        ? { ctor: this.#WebSocket, isWsPackage: false }
        : await defaultWebSocket();
      if (stale()) return;
      const protocols = this.#codec.protocols;
      // `ws`: a history page of 100 messages can be ~6 MiB; nothing the node sends is larger.
      ws = isWsPackage
        ? new ctor(url, protocols, { maxPayload: 16 * 1024 * 1024, perMessageDeflate: false })
        : protocols.length > 0
          ? new ctor(url, protocols)
          : new ctor(url);
    } catch (e) {
      if (stale()) return;
      this.emit("error", { type: "transport", error: new BellhopError("transport", `cannot open ${url}: ${String(e)}`) });
      this.#scheduleReconnect(CloseCode.abnormal, String(e), "backoff", false);
      return;
    }
    ws.binaryType = "arraybuffer";
    const conn: Conn = {
      ws,
      url,
      pending: new Map(),
      welcome: undefined,
      token,
      lastError: undefined,
      received: 0,
      timers: new Set(),
    };
    this.#conn = conn;
    this.#timer(conn, this.#opts.connectTimeoutMs, () => {
      if (!conn.welcome) this.#abandon(conn, CloseCode.abnormal, "connect timeout");
    });
    ws.onopen = () => {
      if (this.#conn !== conn) return;
      this.#request(conn, { type: "auth", token }, this.#opts.connectTimeoutMs).then(
        (frame) => this.#onWelcome(conn, this.#expect<WelcomeFrame>(frame, "welcome")),
        (error: BellhopError) => {
          if (this.#conn !== conn) return;
          // A refused auth (unauthorized: 4001; too many connections of the user: 1008) is
          // followed by the node's close, whose code decides what comes next: wait for it (the
          // connect timeout covers a node that never closes). Only silence drops it here.
          if (error.code === "timeout") this.#abandon(conn, CloseCode.abnormal, `auth: ${error.message}`);
        },
      );
    };
    ws.onmessage = (ev) => this.#onData(conn, ev.data);
    ws.onclose = (ev) => this.#onClose(conn, ev.code, ev.reason);
    ws.onerror = () => {
      // A close event follows with the code; nothing to add here.
    };
  }

  async #tokenForConnect(): Promise<string> {
    const current = this.#token;
    const usable =
      current !== undefined &&
      current !== this.#refusedToken &&
      (tokenTimes(current)?.exp ?? Number.POSITIVE_INFINITY) * 1000 > Date.now();
    if (usable) return current;
    if (!this.#getToken) {
      throw new BellhopError(
        "unauthorized",
        current === undefined ? "no token" : "the token was refused or expired and there is no getToken() to renew it",
      );
    }
    let token: string;
    try {
      token = await this.#getToken();
    } catch (e) {
      if (e instanceof BellhopError) throw e;
      throw new BellhopError("token", `getToken() failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (typeof token !== "string" || token === "") throw new BellhopError("unauthorized", "getToken() gave no token");
    if (token === this.#refusedToken) {
      throw new BellhopError("unauthorized", "getToken() gave the token the node just refused");
    }
    this.#token = token;
    this.#refusedToken = undefined;
    return token;
  }

  #onWelcome(conn: Conn, welcome: WelcomeFrame): void {
    if (this.#conn !== conn || this.#state !== "connecting") return;
    conn.welcome = welcome;
    this.#attempts = 0;
    this.#setState("connected");
    this.emit("connected", {
      url: conn.url,
      sessionId: welcome.sessionId,
      node: welcome.node,
      userId: welcome.userId,
      role: welcome.role,
      property: welcome.property,
      heartbeatSeconds: welcome.heartbeatSeconds,
    });
    if (this.#conn !== conn) return; // a listener disconnected
    for (const sub of this.#subs.values()) {
      if (sub.state === "subscribing") this.#sendSubscribe(conn, sub);
    }
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.resolve(conn);
    this.#scheduleRefresh(conn, 0);
    this.#schedulePing(conn);
  }

  #onData(conn: Conn, data: unknown): void {
    if (this.#conn !== conn) return;
    conn.received += 1;
    let frame: ServerFrame | undefined;
    try {
      frame = asServerFrame(decodeFrame(data));
    } catch (e) {
      this.emit("error", { type: "protocol", error: new BellhopError("internal", `undecodable frame: ${String(e)}`) });
      return;
    }
    if (!frame) {
      this.emit("error", { type: "protocol", error: new BellhopError("internal", "unexpected frame from the node") });
      return;
    }
    if ("id" in frame && frame.id !== undefined) {
      const p = conn.pending.get(frame.id);
      if (p) {
        conn.pending.delete(frame.id);
        if (p.timer !== undefined) clearTimeout(p.timer);
        if (frame.type === "error") {
          if (p.request === "auth") conn.lastError = frame; // the node closes next: this says why
          p.reject(new BellhopError(frame.code, frame.message, frame.retryAfterMs));
        }
        else p.resolve(frame);
        return;
      }
    }
    switch (frame.type) {
      case "message":
        this.#subs.get(frame.channel)?._message(frame as MessageFrame);
        return;
      case "join":
      case "leave":
      case "typing":
        this.#subs.get(frame.channel)?._notice(frame.type, frame.userId);
        return;
      case "unsubscribed": {
        // Without an id: a re-authentication's token no longer allows this channel.
        const sub = this.#subs.get(frame.channel);
        if (sub && frame.id === undefined) sub._ended("server", "the node ended the subscription (token rights changed)");
        return;
      }
      case "error":
        conn.lastError = frame;
        this.emit("error", { type: "server", error: new BellhopError(frame.code, frame.message, frame.retryAfterMs) });
        return;
      default:
        return; // a late reply to a request that timed out
    }
  }

  #onClose(conn: Conn, code: number, reason: string): void {
    if (this.#conn !== conn) return;
    this.#conn = undefined;
    this.#dropConn(conn);
    if (this.#state !== "connecting" && this.#state !== "connected") return;
    const wasUp = conn.welcome !== undefined;
    const why = reason || conn.lastError?.message || `closed with ${code}`;
    for (const sub of this.#subs.values()) sub._interrupted("transport_closed", why);
    const plan = planAfterClose(code);
    if (plan.action === "stop") {
      this.emit("error", {
        type: "connect",
        error: new BellhopError(code === CloseCode.policy ? "rate_limited" : "bad_request", `closed with ${code}: ${why}`),
      });
      this.#toDisconnected(code, why, "transport_closed");
      return;
    }
    if (plan.refreshToken) this.#refusedToken = conn.token;
    if (wasUp) this.#attempts = 0;
    this.#scheduleReconnect(code, why, plan.delay, wasUp);
  }

  #scheduleReconnect(code: number, reason: string, delay: "drain" | "backoff", wasUp: boolean): void {
    if (this.#state === "connected") this.#setState("connecting");
    if (wasUp) this.emit("connecting", { code: "transport_closed", reason });
    const attempt = this.#attempts;
    const delayMs =
      delay === "drain"
        ? Math.floor(this.#opts.random() * this.#backoff.drainJitterMs)
        : backoffDelay(attempt, this.#backoff, this.#opts.random);
    this.#attempts += 1;
    this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
    this.emit("reconnecting", { code, reason, delayMs, attempt, url: this.#urls[this.#urlIndex]! });
    if (this.#state !== "connecting") return; // a listener disconnected
    if (this.#reconnectTimer !== undefined) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      if (this.#state === "connecting") void this.#attempt();
    }, delayMs);
  }

  #toDisconnected(code: number, reason: string, subCode: string): void {
    this.#epoch += 1;
    if (this.#reconnectTimer !== undefined) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn) {
      this.#dropConn(conn);
      this.#closeSocket(conn.ws, { graceful: true, reason: "client disconnect" });
    }
    for (const sub of this.#subs.values()) sub._interrupted(subCode, reason);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.reject(new BellhopError("disconnected", `disconnected: ${reason}`));
    for (const s of this.#sleeps) {
      clearTimeout(s.timer);
      s.reject(new BellhopError("disconnected", `disconnected: ${reason}`));
    }
    this.#sleeps.clear();
    this.#setState("disconnected");
    this.emit("disconnected", { code, reason });
  }

  /** Gives up on a connection that looks dead: no waiting for a closing handshake. */
  #abandon(conn: Conn, code: number, reason: string): void {
    if (this.#conn !== conn) return;
    this.#closeSocket(conn.ws, { graceful: false, reason });
    this.#onClose(conn, code, reason);
  }

  /**
   * Detaches the socket and closes it: with a closing handshake when the app asked
   * (`disconnect()`), without one when the connection looks dead (`ws` can drop it at once; a
   * browser socket is closed and forgotten, its late close event ignored).
   */
  #closeSocket(ws: WebSocketLike, how: { graceful: boolean; reason: string }): void {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => {};
    try {
      if (!how.graceful && ws.terminate) ws.terminate();
      else ws.close(CloseCode.normal, how.reason.slice(0, 100));
    } catch {
      // already closed
    }
  }

  #dropConn(conn: Conn): void {
    for (const t of conn.timers) clearTimeout(t);
    conn.timers.clear();
    const pending = [...conn.pending.values()];
    conn.pending.clear();
    for (const p of pending) {
      if (p.timer !== undefined) clearTimeout(p.timer);
      p.reject(new BellhopError("disconnected", "the connection ended before the reply"));
    }
  }

  #timer(conn: Conn, ms: number, f: () => void): void {
    // setTimeout fires at once for more than 2^31-1 ms (a token valid for a year): clamp, so a
    // far-off refresh happens early (harmless) rather than in a loop.
    const t = setTimeout(() => {
      conn.timers.delete(t);
      if (this.#conn === conn) f();
    }, Math.min(Math.max(0, ms), MAX_TIMER_MS));
    conn.timers.add(t);
  }

  // -- token refresh and heartbeat --------------------------------------------------------

  #scheduleRefresh(conn: Conn, failures: number): void {
    if (!this.#getToken) return;
    const times = tokenTimes(conn.token);
    if (!times) return;
    const due = refreshDelayMs(times, Date.now(), this.#opts.tokenRefreshLeadMs);
    // After a failed refresh: again within a second or so (at least 100 ms apart), until one
    // succeeds or the token expires.
    const delay =
      failures === 0 ? due : Math.max(100, Math.min(backoffDelay(failures, this.#backoff, this.#opts.random), Math.max(due, 1_000)));
    this.#timer(conn, delay, () => void this.#refresh(conn, failures));
  }

  async #refresh(conn: Conn, failures: number): Promise<void> {
    try {
      const token = await this.#getToken!();
      if (this.#conn !== conn) return;
      if (typeof token !== "string" || token === "") throw new BellhopError("token", "getToken() gave no token");
      await this.#request(conn, { type: "auth", token }, this.#opts.requestTimeoutMs);
      if (this.#conn !== conn) return;
      conn.token = token;
      this.#token = token;
      this.emit("token", { exp: tokenTimes(token)?.exp });
      this.#scheduleRefresh(conn, 0);
    } catch (e) {
      if (this.#conn !== conn) return;
      const error = e instanceof BellhopError ? e : new BellhopError("token", `getToken() failed: ${String(e)}`);
      this.emit("error", { type: "refresh", error });
      // The old token still holds until its expiry; try again (the node closes with 4001 at expiry
      // if none succeeds, and the reconnect asks for a token once more).
      this.#scheduleRefresh(conn, failures + 1);
    }
  }

  #schedulePing(conn: Conn): void {
    if (this.#opts.pingIntervalMs <= 0) return;
    this.#timer(conn, this.#opts.pingIntervalMs, () => {
      this.#request(conn, { type: "ping" }, this.#opts.pongTimeoutMs).then(
        () => this.#schedulePing(conn),
        (e: BellhopError) => {
          if (e.code === "timeout") this.#abandon(conn, CloseCode.abnormal, `no pong within ${this.#opts.pongTimeoutMs} ms`);
        },
      );
    });
  }

  // -- frames -----------------------------------------------------------------------------

  #readyConn(): Conn | undefined {
    const conn = this.#conn;
    return this.#state === "connected" && conn?.welcome && conn.ws.readyState === OPEN ? conn : undefined;
  }

  #send(conn: Conn, frame: ClientFrame): void {
    if (conn.ws.readyState !== OPEN) throw new BellhopError("disconnected", "the connection is not open");
    const data = this.#codec.encode(frame);
    if (encodedSize(data) > MAX_FRAME_BYTES) {
      throw new BellhopError("too_large", `the ${frame.type} frame is over ${MAX_FRAME_BYTES} bytes`);
    }
    conn.ws.send(data);
  }

  /** One request on one connection: resolves with the reply that echoes its id. */
  #request(conn: Conn, frame: ClientFrame, timeoutMs: number): Promise<ServerFrame> {
    return new Promise<ServerFrame>((resolve, reject) => {
      const id = this.#nextId++;
      try {
        this.#send(conn, { ...frame, id });
      } catch (e) {
        reject(e);
        return;
      }
      const p: Pending = { request: frame.type, resolve, reject, timer: undefined };
      const receivedBefore = conn.received;
      p.timer = setTimeout(() => {
        conn.pending.delete(id);
        reject(new BellhopError("timeout", `no reply to ${frame.type} within ${timeoutMs} ms`));
        // Not a slow reply but a silent connection (a stopped node, a dead link): drop it, so
        // the retry goes out on a new one.
        if (conn.welcome && conn.received === receivedBefore) {
          this.#abandon(conn, CloseCode.abnormal, `nothing received within ${timeoutMs} ms`);
        }
      }, timeoutMs);
      conn.pending.set(id, p);
    });
  }

  #readPolicy(): CallPolicy {
    return { retry: true, maxAttempts: 5, deadlineMs: this.#opts.requestTimeoutMs * 3 };
  }

  /** A request that waits for a connection and retries as its policy allows. */
  async #call(frame: ClientFrame, policy: CallPolicy): Promise<{ reply: ServerFrame; attempts: number }> {
    if (this.#state === "closed") throw new BellhopError("closed", "the client is closed");
    const deadline = Date.now() + policy.deadlineMs;
    let attempts = 0;
    for (;;) {
      const conn = await this.#whenConnected(deadline);
      attempts += 1;
      try {
        const left = Math.max(1, deadline - Date.now());
        const reply = await this.#request(conn, frame, Math.min(this.#opts.requestTimeoutMs, left));
        return { reply, attempts };
      } catch (e) {
        const error = e instanceof BellhopError ? e : new BellhopError("internal", String(e));
        if (!policy.retry || !error.retryable || attempts >= policy.maxAttempts) throw error;
        const wait =
          error.retryAfterMs ??
          (error.code === "disconnected" ? 0 : backoffDelay(attempts - 1, { baseMs: 100, capMs: 5_000 }, this.#opts.random));
        if (Date.now() + wait >= deadline) throw error;
        this.emit("retry", { request: frame.type, attempt: attempts, error, delayMs: wait });
        if (wait > 0) await this.#sleep(wait);
      }
    }
  }

  #whenConnected(deadline: number): Promise<Conn> {
    const conn = this.#readyConn();
    if (conn) return Promise.resolve(conn);
    if (this.#state === "closed") return Promise.reject(new BellhopError("closed", "the client is closed"));
    if (this.#state === "disconnected") {
      return Promise.reject(new BellhopError("disconnected", "not connected: call connect()"));
    }
    return new Promise<Conn>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new BellhopError("timeout", "not connected before the deadline"));
      }, Math.max(0, deadline - Date.now()));
      const waiter: Waiter = {
        resolve: (c) => {
          clearTimeout(timer);
          resolve(c);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.#waiters.push(waiter);
    });
  }

  #sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const entry = {
        timer: setTimeout(() => {
          this.#sleeps.delete(entry);
          resolve();
        }, ms),
        reject,
      };
      this.#sleeps.add(entry);
    });
  }

  #sendSubscribe(conn: Conn, sub: Subscription): void {
    const since = sub._since;
    const generation = ++sub._generation;
    sub._serverMayHold = true;
    const frame: ClientFrame = { type: "subscribe", channel: sub.channel };
    if (since !== undefined) frame.since = since;
    this.#request(conn, frame, this.#opts.requestTimeoutMs).then(
      (reply) => {
        if (sub._generation !== generation || this.#conn !== conn) return;
        sub._subscribed(this.#expect<SubscribedFrame>(reply, "subscribed"), since);
      },
      (error: BellhopError) => {
        if (sub._generation !== generation || this.#conn !== conn) return;
        if (error.code === "disconnected") return; // resubscribed after the reconnect
        if (error.code === "timeout") {
          this.#abandon(conn, CloseCode.abnormal, `no reply to subscribe ${sub.channel}`);
          return;
        }
        sub._serverMayHold = false;
        if (error.retryable) {
          sub._error(error);
          const wait = error.retryAfterMs ?? backoffDelay(1, this.#backoff, this.#opts.random);
          this.#timer(conn, wait, () => {
            if (sub.state === "subscribing" && sub._generation === generation) this.#sendSubscribe(conn, sub);
          });
          return;
        }
        sub._ended("error", error.message, error);
      },
    );
  }

  #expect<F extends ServerFrame>(frame: ServerFrame, type: F["type"]): F {
    if (frame.type !== type) throw new BellhopError("internal", `expected ${type}, got ${frame.type}`);
    return frame as F;
  }

  #setState(s: ConnectionState): void {
    const old = this.#state;
    if (old === s) return;
    this.#state = s;
    this.emit("state", { oldState: old, newState: s });
  }
}
