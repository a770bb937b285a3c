/**
 * The one error type the SDK rejects with: what failed (a wire `code` or a client-side one),
 * the server's detail, and whether retrying can help.
 */

import type { ErrorCode } from "./frames.js";

/** Client-side failures, besides the server's error codes. */
export type ClientErrorCode =
  /** No reply within the request's timeout. */
  | "timeout"
  /** The connection ended before the reply (or the client is not connected). */
  | "disconnected"
  /** The client was closed with `close()`. */
  | "closed"
  /** The token could not be had (`getToken()` failed or gave nothing). */
  | "token"
  /** The WebSocket could not be opened or failed. */
  | "transport";

export type BellhopErrorCode = ErrorCode | ClientErrorCode;

/** Codes whose request may be repeated (PROTOCOL.md §12), plus the client-side transient ones. */
const RETRYABLE: ReadonlySet<BellhopErrorCode> = new Set<BellhopErrorCode>([
  "rate_limited",
  "unavailable",
  "internal",
  "timeout",
  "disconnected",
  "transport",
]);

export class BellhopError extends Error {
  /** The server's error code, or a client-side one. */
  readonly code: BellhopErrorCode;
  /** The server's wait hint, when it gave one. */
  readonly retryAfterMs: number | undefined;

  constructor(code: BellhopErrorCode, message: string, retryAfterMs?: number) {
    super(message);
    this.name = "BellhopError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }

  /** Whether the same request may succeed if repeated. */
  get retryable(): boolean {
    return RETRYABLE.has(this.code);
  }
}
