/**
 * Real parts for the SDK's tests: a `redis-server` on a free loopback port, `bellhop serve`
 * processes (the debug binary cargo built), tokens from `bellhop token`, and waiting for events
 * with a deadline (never a fixed sleep).
 */

import { spawn, execFile, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { WebSocket as WsWebSocket } from "ws";
import type { WebSocketConstructor } from "../../src/index.js";
import { decodeFrame } from "../../src/codec.js";

const execFileP = promisify(execFile);

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../../..");

/** The node binary: `BELLHOP_BIN`, else `<CARGO_TARGET_DIR or target>/debug/bellhop`. */
export const BIN =
  process.env.BELLHOP_BIN ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(repo, "target"), "debug", "bellhop");

export const SECRET = "sdk-ts-test-secret-0123456789abcdef0123456789";

export function assertBinary(): void {
  if (!existsSync(BIN)) {
    throw new Error(`${BIN} is missing: run \`cargo build -p bellhop\` (make sdk-ts does) or set BELLHOP_BIN`);
  }
}

/** A free loopback port (the OS picks it; a start that loses the race retries with another). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function waitLine(child: ChildProcess, stream: "stdout" | "stderr", match: (line: string) => boolean, ms: number, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const seen: string[] = [];
    const rl = createInterface({ input: child[stream]! });
    const timer = setTimeout(() => {
      rl.close();
      reject(new Error(`${what}: not ready within ${ms} ms:\n${seen.slice(-20).join("\n")}`));
    }, ms);
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}) before it was ready:\n${seen.slice(-20).join("\n")}`));
    };
    child.once("exit", onExit);
    rl.on("line", (line) => {
      seen.push(line);
      if (match(line)) {
        clearTimeout(timer);
        child.off("exit", onExit);
        // Keep draining the pipe, so the child never blocks on it.
        resolve(line);
      }
    });
  });
}

export class Redis {
  private constructor(
    readonly port: number,
    private child: ChildProcess,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<Redis> {
    let last: unknown;
    for (let i = 0; i < 5; i++) {
      const port = await freePort();
      try {
        return new Redis(port, await Redis.spawn(port));
      } catch (e) {
        last = e;
      }
    }
    throw new Error(`could not start redis-server: ${String(last)}`);
  }

  private static async spawn(port: number): Promise<ChildProcess> {
    const child = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    child.once("error", () => {});
    child.stderr!.resume();
    await waitLine(child, "stdout", (l) => l.includes("Ready to accept connections"), 10_000, `redis-server :${port}`);
    return child;
  }

  /** SIGKILL (the port stays ours for `restart`). */
  async kill(): Promise<void> {
    await killChild(this.child, "SIGKILL");
  }

  /** Starts it again on the same port (empty: no persistence). */
  async restart(): Promise<void> {
    this.child = await Redis.spawn(this.port);
  }

  async stop(): Promise<void> {
    await killChild(this.child, "SIGKILL");
  }
}

function killChild(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once("exit", () => resolve());
    child.kill(signal);
  });
}

export interface NodeOptions {
  nodeId: string;
  redisUrl?: string;
  env?: Record<string, string>;
}

export class BellhopNode {
  private constructor(
    readonly nodeId: string,
    readonly host: string,
    readonly adminHost: string,
    readonly child: ChildProcess,
    /** The node's log lines (JSON), for diagnosis. */
    readonly log: string[],
  ) {}

  get url(): string {
    return `ws://${this.host}/ws`;
  }

  get httpUrl(): string {
    return `http://${this.host}`;
  }

  get adminUrl(): string {
    return `http://${this.adminHost}`;
  }

  /** Starts `bellhop serve` on free ports (WS_PORT=0, METRICS_PORT=0: the OS picks; read from its log). */
  static async start(options: NodeOptions): Promise<BellhopNode> {
    assertBinary();
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      WS_PORT: "0",
      METRICS_PORT: "0",
      BIND_ADDR: "127.0.0.1",
      JWT_SECRET: SECRET,
      NODE_ID: options.nodeId,
      LOG_FORMAT: "json",
      // The tests' clients are far faster than people.
      RATE_LIMIT_PUBLISHES_PER_MINUTE: "10000000",
      RATE_LIMIT_FRAMES_PER_SECOND: "1000000",
      RATE_LIMIT_PER_IP: "1000000",
      MAX_CONNECTIONS_PER_USER: "1000",
      PUBLISH_BYTES_PER_USER_PER_MINUTE: "1000000000",
      ...(options.redisUrl ? { REDIS_URL: options.redisUrl } : {}),
      ...options.env,
    };
    const child = spawn(BIN, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
    child.once("error", () => {});
    const log: string[] = [];
    const rl = createInterface({ input: child.stderr! });
    let onLine: ((l: string) => void) | undefined;
    rl.on("line", (l) => {
      if (log.length < 10_000) log.push(l);
      onLine?.(l);
    });
    const listening = await new Promise<{ local: string; admin: string }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${options.nodeId}: no "gateway listening" within 15 s:\n${log.join("\n")}`)), 15_000);
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`${options.nodeId} exited (${code}) before listening:\n${log.join("\n")}`));
      });
      onLine = (l) => {
        try {
          const v = JSON.parse(l) as { fields?: { message?: string; local_addr?: string; admin_addr?: string } };
          if (v.fields?.message === "gateway listening" && v.fields.local_addr && v.fields.admin_addr) {
            clearTimeout(timer);
            resolve({ local: v.fields.local_addr, admin: v.fields.admin_addr });
          }
        } catch {
          // a plain-text line (never with LOG_FORMAT=json)
        }
      };
    });
    child.removeAllListeners("exit");
    onLine = undefined;
    return new BellhopNode(options.nodeId, listening.local, listening.admin, child, log);
  }

  /** SIGKILL: no drain, no close frames; the kernel resets the sockets. */
  kill(): Promise<void> {
    return killChild(this.child, "SIGKILL");
  }

  /** SIGSTOP, and waits until the process is stopped: its sockets stay open, nothing answers. */
  pause(): Promise<void> {
    return pauseProcess(this.child);
  }

  /** SIGTERM: the node drains (1012 to each connection over DRAIN_SECONDS) and exits. */
  terminate(): void {
    this.child.kill("SIGTERM");
  }

  /** Resolves when the process has exited. */
  exited(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => this.child.once("exit", () => resolve()));
  }

  stop(): Promise<void> {
    return killChild(this.child, "SIGKILL");
  }
}

/** A redis-server and one node on it per option (its `redisUrl` set), started together. */
export async function startCluster<T extends NodeOptions[]>(
  ...options: T
): Promise<{ redis: Redis; nodes: { [K in keyof T]: BellhopNode } }> {
  const redis = await Redis.start();
  const nodes = await Promise.all(options.map((o) => BellhopNode.start({ ...o, redisUrl: redis.url })));
  return { redis, nodes: nodes as { [K in keyof T]: BellhopNode } };
}

/** Closes `clients`, then stops `nodes` and `redis` (any may be missing: a start that failed). */
export async function stopCluster(clients: { close(): void }[], nodes: (BellhopNode | undefined)[], redis: Redis | undefined): Promise<void> {
  for (const c of clients) c.close();
  await Promise.all(nodes.map((n) => n?.stop()));
  await redis?.stop();
}

/**
 * SIGSTOP, and waits until every thread of the process is stopped (a signal is delivered
 * asynchronously).
 */
export async function pauseProcess(child: ChildProcess): Promise<void> {
  const pid = child.pid!;
  child.kill("SIGSTOP");
  const deadline = Date.now() + 5_000;
  for (;;) {
    const states = readdirSync(`/proc/${pid}/task`).map((t) => {
      try {
        const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
        return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      } catch {
        return "T"; // the thread is gone
      }
    });
    if (states.every((st) => st === "T" || st === "t")) return;
    if (Date.now() > deadline) throw new Error(`pid ${pid}: not stopped within 5 s (${states.join("")})`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export interface TokenClaims {
  sub: string;
  role: "guest" | "staff" | "manager" | "admin" | "service";
  prop?: string;
  rooms?: string[];
  depts?: string[];
  ttl?: number;
}

/** A token from `bellhop token` (HS256 with the tests' secret). */
export async function mintToken(c: TokenClaims): Promise<string> {
  const args = ["token", "--sub", c.sub, "--role", c.role, "--prop", c.prop ?? "h1"];
  if (c.rooms?.length) args.push("--rooms", c.rooms.join(","));
  if (c.depts?.length) args.push("--depts", c.depts.join(","));
  if (c.ttl !== undefined) args.push("--ttl", String(c.ttl));
  const { stdout } = await execFileP(BIN, args, { env: { PATH: process.env.PATH ?? "", JWT_SECRET: SECRET } });
  return stdout.trim();
}

/**
 * Resolves with the first event `event` of `emitter` for which `pred` holds; rejects after
 * `ms`. Subscribe before causing the event.
 */
export function nextEvent<T>(
  emitter: { on: (event: never, listener: never) => () => void },
  event: string,
  pred: (ctx: T) => boolean = () => true,
  ms = 10_000,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no "${event}" event within ${ms} ms`));
    }, ms);
    const off = (emitter.on as (e: string, l: (ctx: T) => void) => () => void)(event, (ctx: T) => {
      if (!pred(ctx)) return;
      clearTimeout(timer);
      off();
      resolve(ctx);
    });
  });
}

/** Checks `cond` every 10 ms until it holds; fails after `ms` (a deadline, not a settling sleep). */
export async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise<void>((r) => setTimeout(r, 10));
  }
}

/** The `ws` WebSocket, recording every frame the client sends (decoded), on every connection. */
export function recordingWebSocket(): { WebSocket: WebSocketConstructor; sent: Record<string, unknown>[] } {
  const sent: Record<string, unknown>[] = [];
  class Recording extends WsWebSocket {
    override send(data: string | Uint8Array): void {
      sent.push((typeof data === "string" ? JSON.parse(data) : decodeFrame(data)) as Record<string, unknown>);
      super.send(data);
    }
  }
  return { WebSocket: Recording as unknown as WebSocketConstructor, sent };
}
