/**
 * `@bellhop/client`: the Bellhop WebSocket client for browsers and Node 20+.
 * React bindings are in `@bellhop/client/react`.
 */

export { BellhopClient, MAX_FRAME_BYTES } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  ConnectedContext,
  ConnectingContext,
  ConnectionState,
  DisconnectedContext,
  ErrorContext,
  ReconnectingContext,
  ReconnectOptions,
  RetryContext,
  Session,
  StateContext,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { Subscription } from "./subscription.js";
export type {
  HistoryOptions,
  HistoryPage,
  MessageContext,
  PresenceNotice,
  PublishOptions,
  PublishResult,
  ReadResult,
  RecoveryFailedContext,
  SubscribedContext,
  SubscribingContext,
  SubscriptionEvents,
  SubscriptionOptions,
  SubscriptionState,
  UnsubscribedContext,
} from "./subscription.js";
export { BellhopError } from "./errors.js";
export type { BellhopErrorCode, ClientErrorCode } from "./errors.js";
export { backoffDelay, planAfterClose, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions, ClosePlan } from "./backoff.js";
export { tokenTimes, refreshDelayMs } from "./token.js";
export type { TokenTimes } from "./token.js";
export type { CodecName } from "./codec.js";
export * from "./frames.js";
