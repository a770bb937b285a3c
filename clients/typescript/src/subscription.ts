/**
 * A subscription to one channel: its own state machine (`unsubscribed` -> `subscribing` ->
 * `subscribed`), the offset of the last message it delivered, and the de-duplication by that
 * offset. The client owns the socket; a subscription only decides what a frame means for it.
 */

import { Emitter } from "./emitter.js";
import type { BellhopError } from "./errors.js";
import type {
  Envelope,
  HistoryEntry,
  Json,
  MessageFrame,
  Offset,
  SubscribedFrame,
} from "./frames.js";
import { compareOffsets } from "./frames.js";

export type SubscriptionState = "unsubscribed" | "subscribing" | "subscribed";

/** A message delivered to the app: exactly once per offset, in offset order. */
export interface MessageContext {
  channel: string;
  offset: Offset;
  message: Envelope;
}

export interface SubscriptionStateContext {
  oldState: SubscriptionState;
  newState: SubscriptionState;
}

export interface SubscribingContext {
  /** `subscribe_called`, `transport_closed`, `client_disconnected`. */
  code: string;
  reason: string;
}

export interface SubscribedContext {
  channel: string;
  /** The channel's newest offset when this subscription (re)started. */
  offset: Offset;
  /** `false`: messages after `since` may be missing; the app should reload from its own store. */
  recovered: boolean;
  /** Retained messages after the user's read marker. */
  unread: number;
  /** The offset it resumed from, when it did. */
  since: Offset | undefined;
  /** `true` when this is a resubscribe after a reconnect (or with an initial `since`). */
  resumed: boolean;
}

export interface RecoveryFailedContext {
  channel: string;
  /** The offset the subscription asked to resume after. */
  since: Offset;
  /** The channel's newest offset now; the replay of what is retained follows. */
  offset: Offset;
}

export interface UnsubscribedContext {
  /** `unsubscribe_called`, `server` (a re-authentication narrowed the rights), `error`, `client_closed`. */
  code: string;
  reason: string;
}

export interface PresenceNotice {
  channel: string;
  userId: string;
}

export type SubscriptionEvents = {
  state: (ctx: SubscriptionStateContext) => void;
  subscribing: (ctx: SubscribingContext) => void;
  subscribed: (ctx: SubscribedContext) => void;
  /** `recovered: false`: reload the channel from the app's own store or with `history()`. */
  recoveryFailed: (ctx: RecoveryFailedContext) => void;
  unsubscribed: (ctx: UnsubscribedContext) => void;
  message: (ctx: MessageContext) => void;
  join: (ctx: PresenceNotice) => void;
  leave: (ctx: PresenceNotice) => void;
  typing: (ctx: PresenceNotice) => void;
  /** The unread count changed (from `subscribed`, a new live message, or a `read()`). */
  unread: (ctx: { channel: string; unread: number }) => void;
  error: (ctx: { channel: string; error: BellhopError }) => void;
};

export interface SubscriptionOptions {
  /** Resume after this offset (the app's stored position) on the first subscribe. */
  since?: Offset;
}

export interface PublishOptions {
  priority?: "low" | "normal" | "high" | "urgent";
  correlationId?: string;
  /** Default: a fresh random key, reused by every retry of this publish. */
  idempotencyKey?: string;
  /** How long the whole publish, retries included, may take (default: the client's). */
  deadlineMs?: number;
}

export interface PublishResult {
  messageId: string;
  offset: Offset;
  /** The node recognised the idempotency key: nothing new was stored (newer nodes only). */
  duplicate: boolean;
  idempotencyKey: string;
  /** How many times the frame was sent (1 when no retry was needed). */
  attempts: number;
}

export interface HistoryOptions {
  since?: Offset;
  /** 1-100 (the node's default: 50). */
  limit?: number;
}

export interface HistoryPage {
  channel: string;
  messages: HistoryEntry[];
  /** The node cut the page: ask again with `since` = the last offset (`historyPages` does). */
  more: boolean;
}

export interface ReadResult {
  /** The saved read marker (never moves back). */
  offset: Offset;
  unread: number;
}

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  _subscribe(sub: Subscription): void;
  _unsubscribe(sub: Subscription): void;
  publish(channel: string, event: string, payload?: Json, options?: PublishOptions): Promise<PublishResult>;
  history(channel: string, options?: HistoryOptions): Promise<HistoryPage>;
  historyPages(channel: string, options?: HistoryOptions & { maxPages?: number }): AsyncGenerator<HistoryPage>;
  presence(channel: string): Promise<string[]>;
  typing(channel: string): boolean;
  read(channel: string, offset: Offset): Promise<ReadResult>;
  _delivered(ctx: MessageContext): void;
}

export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  #host: SubscriptionHost;
  #state: SubscriptionState = "unsubscribed";
  #lastOffset: Offset | undefined;
  /** The channel's newest offset at the latest `subscribed`: messages past it are new (unread). */
  #subscribedOffset: Offset | undefined;
  #unread: number | undefined;
  #recovered: boolean | undefined;
  #duplicatesDropped = 0;
  #delivered = 0;
  #everSubscribed = false;
  /** Which subscribe request counts: bumped at each one, so a late reply to an older one is ignored. */
  _generation = 0;
  /** Whether the node may hold this subscription on the current connection (so unsubscribe tells it). */
  _serverMayHold = false;

  /** @internal Created by `BellhopClient.newSubscription`. */
  constructor(host: SubscriptionHost, channel: string, options: SubscriptionOptions = {}) {
    super();
    this.#host = host;
    this.channel = channel;
    this.#lastOffset = options.since;
  }

  get state(): SubscriptionState {
    return this.#state;
  }

  /** The offset of the last message delivered (or the position subscribed at): where a resume starts. */
  get lastOffset(): Offset | undefined {
    return this.#lastOffset;
  }

  /** The unread count as the node last reported it, plus live messages since. */
  get unread(): number | undefined {
    return this.#unread;
  }

  /** The `recovered` flag of the latest `subscribed`. */
  get recovered(): boolean | undefined {
    return this.#recovered;
  }

  /** Messages dropped because their offset was not after the last delivered one. */
  get duplicatesDropped(): number {
    return this.#duplicatesDropped;
  }

  /** Messages delivered to the app. */
  get delivered(): number {
    return this.#delivered;
  }

  /** Starts (or keeps) the subscription; it resubscribes by itself after every reconnect. */
  subscribe(): void {
    if (this.#state !== "unsubscribed") return;
    this.#setState("subscribing");
    this.emit("subscribing", { code: "subscribe_called", reason: "subscribe called" });
    this.#host._subscribe(this);
  }

  /** Ends the subscription (it keeps its last offset: a later `subscribe()` resumes from it). */
  unsubscribe(): void {
    if (this.#state === "unsubscribed") return;
    this.#setState("unsubscribed");
    this.emit("unsubscribed", { code: "unsubscribe_called", reason: "unsubscribe called" });
    this.#host._unsubscribe(this);
  }

  /**
   * Resolves once subscribed (at once if it is); rejects if the subscription ends
   * (`unsubscribed`: refused, or `unsubscribe()`) or `timeoutMs` passes first.
   */
  ready(timeoutMs = 10_000): Promise<void> {
    if (this.#state === "subscribed") return Promise.resolve();
    if (this.#state === "unsubscribed") return Promise.reject(new Error(`${this.channel}: not subscribing`));
    return new Promise<void>((resolve, reject) => {
      const done = (e?: Error) => {
        clearTimeout(timer);
        off();
        if (e) reject(e);
        else resolve();
      };
      const off = this.on("state", ({ newState }) => {
        if (newState === "subscribed") done();
        else if (newState === "unsubscribed") done(new Error(`${this.channel}: unsubscribed`));
      });
      const timer = setTimeout(() => done(new Error(`${this.channel}: not subscribed within ${timeoutMs} ms`)), timeoutMs);
    });
  }

  publish(event: string, payload?: Json, options?: PublishOptions): Promise<PublishResult> {
    return this.#host.publish(this.channel, event, payload, options);
  }

  history(options?: HistoryOptions): Promise<HistoryPage> {
    return this.#host.history(this.channel, options);
  }

  historyPages(options?: HistoryOptions & { maxPages?: number }): AsyncGenerator<HistoryPage> {
    return this.#host.historyPages(this.channel, options);
  }

  presence(): Promise<string[]> {
    return this.#host.presence(this.channel);
  }

  /** Tells the others you are typing (throttled); `false` when it was not sent. */
  typing(): boolean {
    return this.#host.typing(this.channel);
  }

  /** Sets the read marker, by default at the last delivered message. */
  async read(offset: Offset | undefined = this.#lastOffset): Promise<ReadResult> {
    if (offset === undefined) throw new TypeError(`read(${this.channel}): no offset yet`);
    const r = await this.#host.read(this.channel, offset);
    this.#setUnread(r.unread);
    return r;
  }

  // -- called by the client ---------------------------------------------------------------

  /** @internal The connection ended (or the client stopped): the subscription waits to resume. */
  _interrupted(code: string, reason: string): void {
    this._serverMayHold = false;
    if (this.#state !== "subscribed") return;
    this.#setState("subscribing");
    this.emit("subscribing", { code, reason });
  }

  /** @internal The node answered `subscribed` to the request sent with `since`. */
  _subscribed(frame: SubscribedFrame, since: Offset | undefined): void {
    if (this.#state !== "subscribing") return;
    const resumed = since !== undefined;
    // Where de-duplication starts. Without `since`: the channel's newest offset (live messages
    // follow it). With a `since` newer than the channel's newest (a position the node never
    // handed out), live delivery starts after the newest, so that is the position.
    if (since === undefined || compareOffsets(since, frame.offset) > 0) this.#lastOffset = frame.offset;
    this.#subscribedOffset = frame.offset;
    this.#recovered = frame.recovered;
    this.#everSubscribed = true;
    this.#setState("subscribed");
    this.emit("subscribed", {
      channel: this.channel,
      offset: frame.offset,
      recovered: frame.recovered,
      unread: frame.unread,
      since,
      resumed,
    });
    if (typeof frame.unread === "number") this.#setUnread(frame.unread);
    if (!frame.recovered && since !== undefined) {
      this.emit("recoveryFailed", { channel: this.channel, since, offset: frame.offset });
    }
  }

  /** @internal A `message` frame for this channel. Returns whether it was delivered. */
  _message(frame: MessageFrame): boolean {
    if (this.#state === "unsubscribed") return false;
    if (this.#lastOffset !== undefined && compareOffsets(frame.offset, this.#lastOffset) <= 0) {
      this.#duplicatesDropped += 1;
      return false;
    }
    this.#lastOffset = frame.offset;
    this.#delivered += 1;
    if (
      this.#unread !== undefined &&
      this.#subscribedOffset !== undefined &&
      compareOffsets(frame.offset, this.#subscribedOffset) > 0
    ) {
      this.#setUnread(this.#unread + 1);
    }
    const ctx: MessageContext = { channel: this.channel, offset: frame.offset, message: frame.message };
    this.emit("message", ctx);
    this.#host._delivered(ctx);
    return true;
  }

  /** @internal A join, leave or typing notice. */
  _notice(kind: "join" | "leave" | "typing", userId: string): void {
    if (this.#state !== "subscribed") return;
    this.emit(kind, { channel: this.channel, userId });
  }

  /** @internal The node ended the subscription, or refused it for good. */
  _ended(code: string, reason: string, error?: BellhopError): void {
    this._serverMayHold = false;
    if (error) this.emit("error", { channel: this.channel, error });
    if (this.#state === "unsubscribed") return;
    this.#setState("unsubscribed");
    this.emit("unsubscribed", { code, reason });
  }

  /** @internal A transient failure worth telling the app about (the subscription retries). */
  _error(error: BellhopError): void {
    this.emit("error", { channel: this.channel, error });
  }

  /** @internal Whether a subscribe should carry `since`: after the first success, or with one given. */
  get _since(): Offset | undefined {
    return this.#everSubscribed || this.#lastOffset !== undefined ? this.#lastOffset : undefined;
  }

  #setUnread(n: number): void {
    if (this.#unread === n) return;
    this.#unread = n;
    this.emit("unread", { channel: this.channel, unread: n });
  }

  #setState(s: SubscriptionState): void {
    const old = this.#state;
    if (old === s) return;
    this.#state = s;
    this.emit("state", { oldState: old, newState: s });
  }
}
