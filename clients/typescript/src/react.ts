/**
 * React bindings (`@bellhop/client/react`): a provider for one client, `useBellhop()` for the
 * connection (`isConnected`, `connectionStatus`, `connect`, `disconnect`, `on`, `off`, `send`)
 * and `useChannel()` for one channel's live messages, unread count and typing.
 *
 * The hooks never close the client (it outlives components; StrictMode mounts twice). Channels a
 * hook asked for are counted per client, and unsubscribed when the last component using them
 * unmounts.
 */

import type { ReactNode } from "react";
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";
// Types from the package's public entry: the bindings stand on the client's public API only.
import type {
  BellhopClient,
  ClientEvents,
  ConnectionState,
  Envelope,
  Json,
  MessageContext,
  Offset,
  PresenceNotice,
  PublishOptions,
  PublishResult,
  ReadResult,
  RecoveryFailedContext,
  Subscription,
  SubscriptionState,
} from "./index.js";

export const BellhopContext = createContext<BellhopClient | null>(null);

/** Makes `client` the one `useBellhop()` and `useChannel()` use below it. */
export function BellhopProvider(props: { client: BellhopClient; children?: ReactNode }): ReactNode {
  return createElement(BellhopContext.Provider, { value: props.client }, props.children);
}

function useClient(explicit: BellhopClient | undefined): BellhopClient {
  const fromContext = useContext(BellhopContext);
  const client = explicit ?? fromContext;
  if (!client) throw new Error("useBellhop: no client (wrap the tree in <BellhopProvider client={...}> or pass { client })");
  return client;
}

// Channel use counts per client, so two components on one channel share one subscription.
const channelUse = new WeakMap<BellhopClient, Map<string, number>>();

function acquire(client: BellhopClient, channel: string, since?: Offset): Subscription {
  let uses = channelUse.get(client);
  if (!uses) {
    uses = new Map();
    channelUse.set(client, uses);
  }
  uses.set(channel, (uses.get(channel) ?? 0) + 1);
  const sub = client.getSubscription(channel) ?? client.newSubscription(channel, since === undefined ? {} : { since });
  sub.subscribe();
  return sub;
}

function release(client: BellhopClient, channel: string): void {
  const uses = channelUse.get(client);
  const n = (uses?.get(channel) ?? 1) - 1;
  if (n > 0) {
    uses!.set(channel, n);
    return;
  }
  uses?.delete(channel);
  const sub = client.getSubscription(channel);
  if (sub) client.removeSubscription(sub);
}

/** A handler for a message event (`"SERVICE_REQUEST"`, or `"*"` for every message). */
export type MessageHandler = (message: Envelope, ctx: MessageContext) => void;

/** Client event names (lower case); anything else names a message event (`UPPER_SNAKE`) or `"*"`. */
export type ClientEventName = keyof ClientEvents;

const CLIENT_EVENTS: ReadonlySet<string> = new Set<ClientEventName>([
  "state",
  "connecting",
  "connected",
  "reconnecting",
  "disconnected",
  "closed",
  "error",
  "token",
  "message",
]);

export interface UseBellhopOptions {
  /** Default: the `BellhopProvider`'s client. */
  client?: BellhopClient;
  /** Channels whose messages `on(EVENT, ...)` handlers receive (subscribed while mounted). */
  channels?: string[];
  /** Call `connect()` on mount (default `true`). */
  autoConnect?: boolean;
}

export interface UseBellhopResult {
  client: BellhopClient;
  isConnected: boolean;
  connectionStatus: ConnectionState;
  connect: () => void;
  disconnect: () => void;
  /**
   * `on("SERVICE_REQUEST", (message, ctx) => ...)` for messages of that event on the hook's
   * channels (`"*"`: every event), or `on("connected", ctx => ...)` for a client event. Returns
   * the function that removes the handler; handlers are removed on unmount too.
   */
  on: {
    <E extends ClientEventName>(event: E, handler: ClientEvents[E]): () => void;
    (event: string, handler: MessageHandler): () => void;
  };
  off: {
    <E extends ClientEventName>(event: E, handler: ClientEvents[E]): void;
    (event: string, handler: MessageHandler): void;
  };
  /** Publishes; resolves with the ack (retried with its idempotency key, see `publish`). */
  send: (channel: string, event: string, payload?: Json, options?: PublishOptions) => Promise<PublishResult>;
}

export function useBellhop(options: UseBellhopOptions = {}): UseBellhopResult {
  const client = useClient(options.client);
  const autoConnect = options.autoConnect ?? true;
  const channelsKey = (options.channels ?? []).join("\n");

  const connectionStatus = useSyncExternalStore(
    useCallback((onChange: () => void) => client.on("state", onChange), [client]),
    () => client.state,
    () => client.state,
  );

  useEffect(() => {
    if (autoConnect && client.state === "disconnected") client.connect();
  }, [client, autoConnect]);

  const channelsRef = useRef<ReadonlySet<string>>(new Set());
  useEffect(() => {
    const channels = channelsKey === "" ? [] : channelsKey.split("\n");
    channelsRef.current = new Set(channels);
    for (const ch of channels) acquire(client, ch);
    return () => {
      for (const ch of channels) release(client, ch);
    };
  }, [client, channelsKey]);

  // Handlers this hook added: removed by off() and on unmount.
  const handlers = useRef(new Map<string, Map<unknown, () => void>>());
  useEffect(() => {
    const registry = handlers.current;
    return () => {
      for (const m of registry.values()) for (const remove of m.values()) remove();
      registry.clear();
    };
  }, [client]);

  const offImpl = useCallback((event: string, handler: unknown) => {
    const m = handlers.current.get(event);
    const remove = m?.get(handler);
    if (remove) {
      m!.delete(handler);
      remove();
    }
  }, []);
  const off = offImpl as UseBellhopResult["off"];

  const on = useCallback(
    (event: string, handler: unknown) => {
      let remove: () => void;
      if (CLIENT_EVENTS.has(event)) {
        remove = client.on(event as ClientEventName, handler as ClientEvents[ClientEventName]);
      } else {
        const h = handler as MessageHandler;
        remove = client.on("message", (ctx) => {
          const channels = channelsRef.current;
          if (channels.size > 0 && !channels.has(ctx.channel)) return;
          if (event === "*" || ctx.message.event === event) h(ctx.message, ctx);
        });
      }
      let m = handlers.current.get(event);
      if (!m) {
        m = new Map();
        handlers.current.set(event, m);
      }
      m.get(handler)?.();
      m.set(handler, remove);
      return () => offImpl(event, handler);
    },
    [client, offImpl],
  ) as UseBellhopResult["on"];

  const connect = useCallback(() => client.connect(), [client]);
  const disconnect = useCallback(() => client.disconnect(), [client]);
  const send = useCallback(
    (channel: string, event: string, payload?: Json, opts?: PublishOptions) => client.publish(channel, event, payload, opts),
    [client],
  );

  return useMemo(
    () => ({
      client,
      isConnected: connectionStatus === "connected",
      connectionStatus,
      connect,
      disconnect,
      on,
      off,
      send,
    }),
    [client, connectionStatus, connect, disconnect, on, off, send],
  );
}

export interface UseChannelOptions {
  client?: BellhopClient;
  /** Resume after this offset (the app's stored position) when the subscription is new. */
  since?: Offset;
  /** Keep at most this many recent messages in `messages` (default 100; 0 keeps none). */
  keep?: number;
  /** Called for every delivered message (exactly once per offset, in order). */
  onMessage?: (ctx: MessageContext) => void;
  /** Called when a resume could not recover everything: reload from the app's store. */
  onRecoveryFailed?: (ctx: RecoveryFailedContext) => void;
}

export interface UseChannelResult {
  /** The channel's subscription (undefined until the first effect ran). */
  subscription: Subscription | undefined;
  state: SubscriptionState;
  /** The most recent messages, oldest first. */
  messages: MessageContext[];
  lastOffset: Offset | undefined;
  unread: number | undefined;
  /** `false` after a resume that could not recover everything, until the next good one. */
  recovered: boolean | undefined;
  /** Users who sent `typing` in the last few seconds. */
  typingUsers: string[];
  publish: (event: string, payload?: Json, options?: PublishOptions) => Promise<PublishResult>;
  typing: () => boolean;
  read: (offset?: Offset) => Promise<ReadResult>;
}

/** How long a `typing` notice shows a user as typing. */
const TYPING_SHOWN_MS = 5_000;

export function useChannel(channel: string, options: UseChannelOptions = {}): UseChannelResult {
  const client = useClient(options.client);
  const keep = options.keep ?? 100;
  // Rendering creates nothing: the subscription is made (or shared) when the effect runs.
  const [sub, setSub] = useState<Subscription | undefined>(() => client.getSubscription(channel));
  const [state, setState] = useState<SubscriptionState>(sub?.state ?? "unsubscribed");
  const [messages, setMessages] = useState<MessageContext[]>([]);
  const [unread, setUnread] = useState<number | undefined>(sub?.unread);
  const [recovered, setRecovered] = useState<boolean | undefined>(sub?.recovered);
  const [lastOffset, setLastOffset] = useState<Offset | undefined>(sub?.lastOffset);
  const [typingUsers, setTypingUsers] = useState<string[]>([]);
  const callbacks = useRef(options);
  callbacks.current = options;

  useEffect(() => {
    const s = acquire(client, channel, options.since);
    setSub(s);
    setState(s.state);
    setUnread(s.unread);
    setRecovered(s.recovered);
    setLastOffset(s.lastOffset);
    const typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
    const offs = [
      s.on("state", (ctx) => setState(ctx.newState)),
      s.on("message", (ctx) => {
        setLastOffset(ctx.offset);
        if (keep > 0) setMessages((prev) => (prev.length >= keep ? [...prev.slice(prev.length - keep + 1), ctx] : [...prev, ctx]));
        callbacks.current.onMessage?.(ctx);
      }),
      s.on("subscribed", (ctx) => {
        setRecovered(ctx.recovered);
        setLastOffset(s.lastOffset);
      }),
      s.on("recoveryFailed", (ctx) => callbacks.current.onRecoveryFailed?.(ctx)),
      s.on("unread", (ctx) => setUnread(ctx.unread)),
      s.on("typing", (ctx: PresenceNotice) => {
        clearTimeout(typingTimers.get(ctx.userId));
        setTypingUsers((prev) => (prev.includes(ctx.userId) ? prev : [...prev, ctx.userId]));
        typingTimers.set(
          ctx.userId,
          setTimeout(() => {
            typingTimers.delete(ctx.userId);
            setTypingUsers((prev) => prev.filter((u) => u !== ctx.userId));
          }, TYPING_SHOWN_MS),
        );
      }),
    ];
    return () => {
      for (const off of offs) off();
      for (const t of typingTimers.values()) clearTimeout(t);
      release(client, channel);
    };
    // `since` only matters for a new subscription; changing it later does not resubscribe.
  }, [client, channel, keep]);

  const publish = useCallback(
    (event: string, payload?: Json, opts?: PublishOptions) => client.publish(channel, event, payload, opts),
    [client, channel],
  );
  const typing = useCallback(() => client.typing(channel), [client, channel]);
  const read = useCallback(
    (offset?: Offset) => {
      if (sub) return sub.read(offset);
      if (offset === undefined) return Promise.reject(new TypeError(`read(${channel}): no offset yet`));
      return client.read(channel, offset);
    },
    [client, channel, sub],
  );

  return { subscription: sub, state, messages, lastOffset, unread, recovered, typingUsers, publish, typing, read };
}
