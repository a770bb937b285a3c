/**
 * The machine-readable protocol (docs/asyncapi.yaml, docs/openapi.yaml) against its official
 * parsers, against the SDK's frame types, and against what a real node sends and the SDK sends:
 *
 * - @asyncapi/parser and @readme/openapi-parser accept the documents without an error or warning;
 * - the frame types the node receives and sends in the AsyncAPI operations are the SDK's
 *   `ClientFrame` and `ServerFrame` types, and each frame interface in src/frames.ts has exactly
 *   the schema's properties, with the schema's required ones non-optional (read with the
 *   TypeScript compiler);
 * - every frame the SDK sent and every frame a node sent during a session that uses every frame
 *   type is valid against its AsyncAPI schema (ajv); the HTTP API's answers against OpenAPI.
 */

import { Parser } from "@asyncapi/parser";
import { compileErrors, validate as validateOpenApi } from "@readme/openapi-parser";
import { Ajv } from "ajv";
import { Ajv2020 } from "ajv/dist/2020.js";
import formats from "ajv-formats";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { WebSocket as WsWebSocket } from "ws";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";

// ajv-formats is CommonJS with its plugin as `exports.default`.
const addFormats = ((formats as unknown as { default?: typeof formats }).default ?? formats) as unknown as (
  ajv: Ajv | Ajv2020,
) => void;
import { BellhopClient, CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES, type WebSocketConstructor } from "../src/index.js";
import { decodeFrame } from "../src/codec.js";
import { BellhopNode, mintToken, nextEvent } from "./support/cluster.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const docs = path.resolve(here, "../../../docs");
const asyncapiText = readFileSync(path.join(docs, "asyncapi.yaml"), "utf8");
const openapiText = readFileSync(path.join(docs, "openapi.yaml"), "utf8");
const asyncapi = parseYaml(asyncapiText) as AsyncApiDoc;
const openapi = parseYaml(openapiText) as { components: { schemas: Record<string, unknown> } };

interface JsonSchema {
  $ref?: string;
  type?: string;
  const?: unknown;
  required?: string[];
  properties?: Record<string, JsonSchema>;
}
interface AsyncApiDoc {
  operations: Record<
    string,
    { action: "send" | "receive"; messages: { $ref: string }[]; reply?: { messages: { $ref: string }[] } }
  >;
  components: { messages: Record<string, { payload: { $ref: string } }>; schemas: Record<string, JsonSchema> };
}

const schemaName = (ref: string) => ref.split("/").at(-1)!;

/**
 * For each direction, frame type -> schema name, from the operations: `receive` (what the node
 * receives: client frames), `send` (what it sends: server frames, replies included).
 */
function framesByDirection(): { receive: Map<string, string>; send: Map<string, string> } {
  const out = { receive: new Map<string, string>(), send: new Map<string, string>() };
  const add = (direction: "send" | "receive", ref: string) => {
    const schema = schemaName(asyncapi.components.messages[schemaName(ref)]!.payload.$ref);
    const type = asyncapi.components.schemas[schema]!.properties!.type!.const as string;
    const known = out[direction].get(type);
    if (known !== undefined && known !== schema) throw new Error(`${direction} ${type}: two schemas (${known}, ${schema})`);
    out[direction].set(type, schema);
  };
  for (const op of Object.values(asyncapi.operations)) {
    for (const m of op.messages) add(op.action, m.$ref);
    // A reply goes the other way.
    for (const m of op.reply?.messages ?? []) add(op.action === "receive" ? "send" : "receive", m.$ref);
  }
  return out;
}

/** The properties of each interface in src/frames.ts, and the members of the frame unions, via the compiler. */
function tsShapes() {
  const file = path.resolve(here, "../src/frames.ts");
  const program = ts.createProgram([file], { strict: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.NodeNext });
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(file)!;
  const interfaces = new Map<string, Map<string, boolean>>(); // name -> prop -> optional
  const unions = new Map<string, string[]>();
  ts.forEachChild(source, (node) => {
    if (ts.isInterfaceDeclaration(node)) {
      const props = new Map<string, boolean>();
      for (const sym of checker.getTypeAtLocation(node).getProperties()) {
        props.set(sym.getName(), (sym.getFlags() & ts.SymbolFlags.Optional) !== 0);
      }
      interfaces.set(node.name.text, props);
    }
    if (ts.isTypeAliasDeclaration(node) && ts.isUnionTypeNode(node.type)) {
      unions.set(node.name.text, node.type.types.map((t) => t.getText(source)));
    }
  });
  return { interfaces, unions };
}

describe("docs/asyncapi.yaml and docs/openapi.yaml", () => {
  it("are accepted by the official parsers, without errors or warnings", async () => {
    const { document, diagnostics } = await new Parser().parse(asyncapiText);
    const problems = diagnostics.filter((d) => d.severity <= 1).map((d) => `${d.code}: ${d.message} at ${d.path.join(".")}`);
    expect(problems).toEqual([]);
    expect(document?.version()).toMatch(/^3\./);
    expect(document?.operations().length).toBe(Object.keys(asyncapi.operations).length);

    const result = await validateOpenApi(parseYaml(openapiText));
    expect(result.valid, result.valid ? "" : compileErrors(result)).toBe(true);
    expect(result.warnings ?? []).toEqual([]);
  });

  it("name the SDK's frame types, and each frame interface has the schema's fields", () => {
    const { receive, send } = framesByDirection();
    expect([...receive.keys()].sort()).toEqual([...CLIENT_FRAME_TYPES].sort());
    expect([...send.keys()].sort()).toEqual([...SERVER_FRAME_TYPES].sort());

    const { interfaces, unions } = tsShapes();
    expect(unions.get("ClientFrame")!.sort()).toEqual([...receive.values()].sort());
    expect(unions.get("ServerFrame")!.sort()).toEqual([...send.values()].sort());
    const checked = [...receive.values(), ...send.values(), "Envelope", "HistoryEntry"];
    for (const name of checked) {
      const schema = asyncapi.components.schemas[name]!;
      const props = interfaces.get(name);
      expect(props, `interface ${name} in src/frames.ts`).toBeDefined();
      expect([...props!.keys()].sort(), `${name}: fields`).toEqual(Object.keys(schema.properties!).sort());
      const required = [...props!.entries()].filter(([, optional]) => !optional).map(([k]) => k).sort();
      expect(required, `${name}: required fields`).toEqual([...(schema.required ?? [])].sort());
    }
  });
});

describe("real frames against the schemas", () => {
  let node: BellhopNode;
  beforeAll(async () => {
    node = await BellhopNode.start({ nodeId: "node-schema" });
  });
  afterAll(async () => {
    await node?.stop();
  });

  it("every frame the SDK sent and the node sent in a session using every frame type is valid", async () => {
    const ajv = new Ajv({ strict: false, allErrors: true });
    addFormats(ajv);
    ajv.addSchema(asyncapi, "asyncapi");
    const { receive, send } = framesByDirection();
    const sent: unknown[] = [];
    const received: unknown[] = [];
    class Recording extends WsWebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols);
        this.addEventListener("message", (ev) => received.push(decodeFrame(ev.data)));
      }
      override send(data: string | Uint8Array): void {
        sent.push(typeof data === "string" ? JSON.parse(data) : decodeFrame(data));
        super.send(data);
      }
    }
    const Ws = Recording as unknown as WebSocketConstructor;
    const other = new BellhopClient({ url: node.url, token: await mintToken({ sub: "ann", role: "staff", depts: ["housekeeping"] }) });
    const c = new BellhopClient({
      url: node.url,
      getToken: () => mintToken({ sub: "maria", role: "staff", depts: ["housekeeping"] }),
      WebSocket: Ws,
      codec: "msgpack",
    });
    try {
      const ch = "dept:housekeeping";
      const sub = c.newSubscription(ch);
      const subscribed = nextEvent(sub, "subscribed");
      sub.subscribe();
      c.connect();
      await subscribed;
      // join: a second user arrives after us (its first notice goes out at once)
      const joined = nextEvent(sub, "join");
      const up = nextEvent(other, "connected");
      other.connect();
      await up;
      const otherSub = other.subscribe(ch);
      await Promise.all([nextEvent(otherSub, "subscribed"), joined]);
      const typed = nextEvent(sub, "typing");
      otherSub.typing();
      await typed;
      const got = nextEvent(sub, "message");
      const ack = await c.publish(ch, "SERVICE_REQUEST", { room: "101", item: "towels" }, { correlationId: "req-1", priority: "high" });
      await got;
      await c.history(ch, { since: "0-0", limit: 10 });
      await c.presence(ch);
      sub.typing();
      await sub.read(ack.offset);
      await c.ping();
      await expect(c.publish("dept:maintenance", "X")).rejects.toMatchObject({ code: "forbidden" }); // error
      // leave: newer nodes hold a notice within 2 s of the last one, then send it
      const left = nextEvent(sub, "leave");
      other.removeSubscription(otherSub);
      await left;
      const unsubscribed = nextEvent(sub, "unsubscribed");
      sub.unsubscribe();
      await unsubscribed;
      // unsubscribed arrives after the state change; wait for the frame itself
      await expect.poll(() => received.some((f) => (f as { type: string }).type === "unsubscribed"), { timeout: 5_000 }).toBe(true);
      // auth on a live connection (re-authentication) is the same frame as the first one
    } finally {
      c.close();
      other.close();
    }

    const check = (frames: unknown[], byType: Map<string, string>, direction: string) => {
      const seen = new Set<string>();
      for (const f of frames) {
        const type = (f as { type: string }).type;
        const schema = byType.get(type);
        expect(schema, `${direction} frame type ${type}`).toBeDefined();
        const valid = ajv.validate({ $ref: `asyncapi#/components/schemas/${schema}` }, f);
        expect(valid, `${direction} ${JSON.stringify(f)}: ${ajv.errorsText()}`).toBe(true);
        seen.add(type);
      }
      return seen;
    };
    const clientTypes = check(sent, receive, "sent");
    const serverTypes = check(received, send, "received");
    expect([...clientTypes].sort()).toEqual([...CLIENT_FRAME_TYPES].sort());
    expect([...serverTypes].sort()).toEqual([...SERVER_FRAME_TYPES].sort());
  });

  it("the HTTP API's answers match docs/openapi.yaml", async () => {
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    addFormats(ajv);
    ajv.addSchema(openapi, "openapi");
    const ok = (name: string, body: unknown) =>
      expect(ajv.validate({ $ref: `openapi#/components/schemas/${name}` }, body), `${name}: ${ajv.errorsText()}`).toBe(true);
    const svc = await mintToken({ sub: "pms", role: "service" });
    const auth = { authorization: `Bearer ${svc}` };
    const pub = await fetch(`${node.httpUrl}/api/v1/publish`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ channel: "room:7", event: "ROOM_STATUS_UPDATE", payload: { room: "7", status: "clean" } }),
    });
    expect(pub.status).toBe(200);
    ok("PublishResult", await pub.json());
    const hist = await fetch(`${node.httpUrl}/api/v1/channels/room%3A7/history?limit=5`, { headers: auth });
    expect(hist.status).toBe(200);
    ok("HistoryResult", await hist.json());
    const pres = await fetch(`${node.httpUrl}/api/v1/channels/room:7/presence`, { headers: auth });
    expect(pres.status).toBe(200);
    ok("PresenceResult", await pres.json());
    const denied = await fetch(`${node.httpUrl}/api/v1/channels/room:7/presence`);
    expect(denied.status).toBe(401);
    ok("ErrorBody", await denied.json());
    const ready = await fetch(`${node.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    ok("Readiness", await ready.json());
  });
});
