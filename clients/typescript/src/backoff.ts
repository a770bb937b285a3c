/**
 * Reconnect timing and what a close code means for the client. Pure functions: the random
 * source is an argument, so tests fix it.
 */

import { CloseCode } from "./frames.js";

export interface BackoffOptions {
  /** The ceiling of the first delay, in ms (default 500). */
  baseMs: number;
  /** The largest ceiling, in ms (default 20,000). */
  capMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, capMs: 20_000 };

/**
 * "Full jitter" exponential backoff: a delay drawn uniformly from
 * `[0, min(cap, base * 2^attempt))`. Spreading the whole range (rather than adding a little
 * jitter to a fixed delay) is what keeps thousands of clients of a failed node from arriving
 * together.
 */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number = Math.random): number {
  const exp = Math.min(Math.max(0, Math.floor(attempt)), 30);
  const ceiling = Math.min(options.capMs, options.baseMs * 2 ** exp);
  return Math.floor(random() * ceiling);
}

/** What to do after a connection ended. */
export type ClosePlan =
  | {
      action: "reconnect";
      /** `drain`: soon, with a little jitter (the node is going away, others are fine). */
      delay: "drain" | "backoff";
      /** Get a fresh token before connecting again (4001). */
      refreshToken: boolean;
    }
  | {
      action: "stop";
      /** Why reconnecting cannot help. */
      why: "policy" | "client_bug";
    };

/**
 * Reads a close code (PROTOCOL.md §13):
 * - 1012 (drain, channel subscription lost): reconnect soon with jitter, to any node, and resume;
 * - 4001 (token refused or expired): get a fresh token, then reconnect;
 * - 1008 (policy: frame rate, too many connections): stop and report;
 * - 1002, 1007, 1009 (the client broke the protocol): stop, repeating would break it again;
 * - anything else (1006 network, 1011, 4002 heartbeat, 4008 slow consumer, ...): backoff and resume.
 */
export function planAfterClose(code: number): ClosePlan {
  switch (code) {
    case CloseCode.restart:
      return { action: "reconnect", delay: "drain", refreshToken: false };
    case CloseCode.unauthorized:
      return { action: "reconnect", delay: "backoff", refreshToken: true };
    case CloseCode.policy:
      return { action: "stop", why: "policy" };
    case CloseCode.protocolError:
    case CloseCode.invalidPayload:
    case CloseCode.tooLarge:
      return { action: "stop", why: "client_bug" };
    default:
      return { action: "reconnect", delay: "backoff", refreshToken: false };
  }
}
