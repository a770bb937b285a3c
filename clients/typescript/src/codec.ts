/**
 * JSON and MessagePack frames. The server decodes each frame by its WebSocket type (text: JSON,
 * binary: MessagePack) and sends in the negotiated codec; the client likewise decodes by type.
 */

import { decode as msgpackDecode, encode as msgpackEncode } from "@msgpack/msgpack";
import type { ClientFrame } from "./frames.js";
import { MSGPACK_SUBPROTOCOL } from "./frames.js";

export type CodecName = "json" | "msgpack";

export interface Codec {
  readonly name: CodecName;
  /** The subprotocols to ask for at the upgrade. */
  readonly protocols: string[];
  encode(frame: ClientFrame): string | Uint8Array;
}

export const jsonCodec: Codec = {
  name: "json",
  protocols: [],
  encode: (frame) => JSON.stringify(frame),
};

export const msgpackCodec: Codec = {
  name: "msgpack",
  protocols: [MSGPACK_SUBPROTOCOL],
  encode: (frame) => msgpackEncode(frame, { ignoreUndefined: true }),
};

export function codecFor(name: CodecName): Codec {
  return name === "msgpack" ? msgpackCodec : jsonCodec;
}

/** Bytes of an encoded frame (what the node's 64 KiB limit counts). */
export function encodedSize(data: string | Uint8Array): number {
  return typeof data === "string" ? new TextEncoder().encode(data).length : data.byteLength;
}

/** Decodes a received frame by its WebSocket type. Throws on bytes that are not a frame. */
export function decodeFrame(data: unknown): unknown {
  if (typeof data === "string") return JSON.parse(data);
  if (data instanceof ArrayBuffer) return msgpackDecode(new Uint8Array(data));
  if (ArrayBuffer.isView(data)) {
    return msgpackDecode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  throw new TypeError(`unexpected WebSocket data: ${Object.prototype.toString.call(data)}`);
}
