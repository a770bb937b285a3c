/**
 * Reading a JWT's times, to re-authenticate before it expires. The SDK never verifies a token
 * (the node does); it only reads `exp` and `iat` to know when to ask for a new one.
 */

export interface TokenTimes {
  /** Expiry, Unix seconds. */
  exp: number;
  /** Issued at, Unix seconds, when present. */
  iat?: number;
}

function base64UrlDecode(s: string): string {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The `exp` (and `iat`) of a JWT, or `undefined` when it has none or is not a JWT. */
export function tokenTimes(token: string): TokenTimes | undefined {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[1]!.length > 16_384) return undefined;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]!)) as Record<string, unknown>;
    if (typeof claims.exp !== "number" || !Number.isFinite(claims.exp)) return undefined;
    const iat = typeof claims.iat === "number" && Number.isFinite(claims.iat) ? claims.iat : undefined;
    return iat === undefined ? { exp: claims.exp } : { exp: claims.exp, iat };
  } catch {
    return undefined;
  }
}

/**
 * When to re-authenticate, in ms from `nowMs`: some time before `exp`, as PROTOCOL.md §11
 * advises: a minute, or a tenth of the token's lifetime when that is shorter (so a 5-minute
 * token is refreshed 30 s early, a 1-hour one 60 s early). `leadMs` overrides the lead.
 */
export function refreshDelayMs(times: TokenTimes, nowMs: number, leadMs?: number): number {
  const expMs = times.exp * 1000;
  const lifetimeMs = Math.max(0, expMs - (times.iat !== undefined ? times.iat * 1000 : nowMs));
  const lead = leadMs ?? Math.min(60_000, lifetimeMs / 10);
  return Math.max(0, Math.floor(expMs - lead - nowMs));
}
