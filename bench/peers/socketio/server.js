#!/usr/bin/env node
// Socket.IO 4 peer server for bellhop-loadgen: the same workload Bellhop carries (join rooms,
// publish to a room, every member gets it, the sender too when it is a member), with the server
// set up at its best for it. See ../README.md for the choices.
//
// Env: PORT (default 3000; 0 picks a free port), BIND (default 127.0.0.1), REDIS_URL (optional:
// share rooms between processes through @socket.io/redis-adapter), BACKLOG (listen backlog,
// default 4096). Prints `listening <port>` on stdout once it accepts connections; SIGTERM and
// SIGINT close it cleanly (exit 0).
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const PORT = Number.parseInt(process.env.PORT ?? '3000', 10);
const BIND = process.env.BIND || '127.0.0.1';
const REDIS_URL = process.env.REDIS_URL || '';
const BACKLOG = Number.parseInt(process.env.BACKLOG ?? '4096', 10);

function fail(message) {
  process.stderr.write(`socketio peer: ${message}\n`);
  process.exit(1);
}

if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) fail(`bad PORT ${process.env.PORT}`);
if (!Number.isInteger(BACKLOG) || BACKLOG < 1) fail(`bad BACKLOG ${process.env.BACKLOG}`);

const httpServer = http.createServer((_req, res) => {
  // Nothing but the Socket.IO endpoint is served.
  res.writeHead(404).end();
});

const io = new Server(httpServer, {
  // WebSocket only, like Bellhop and NATS: no long-polling handshake, no upgrade round trip.
  transports: ['websocket'],
  // No compression on either path: the payloads are small, and deflate costs CPU per message
  // (per recipient, on a broadcast) for nothing measured here. Bellhop and NATS run without it.
  perMessageDeflate: false,
  httpCompression: false,
  // The client bundle is never fetched.
  serveClient: false,
  // Connection state recovery stays off (the default): it keeps every sent packet for replay,
  // which the other peers do not do (NATS core has no resume) and which is not measured.
  // 1 MiB per message is far above the largest payload a scenario sends (~10 kB).
  maxHttpBufferSize: 1 << 20,
  // Heartbeats at the defaults (pingInterval 25 s, pingTimeout 20 s): the load generator answers
  // every ping, so they only cost one tiny frame per connection every 25 s.
});

io.on('connection', (socket) => {
  // sub: a list of room names, acknowledged with `true` once joined.
  socket.on('sub', (rooms, ack) => {
    const reply = typeof ack === 'function' ? ack : () => {};
    if (!Array.isArray(rooms) || !rooms.every((r) => typeof r === 'string')) {
      reply(false);
      return;
    }
    // join() is synchronous with the in-memory adapter and may return a promise with others.
    Promise.resolve(socket.join(rooms)).then(
      () => reply(true),
      () => reply(false),
    );
  });
  // pub: (room, payload) goes to every member of the room, the sender included when it is one.
  socket.on('pub', (room, payload) => {
    if (typeof room !== 'string') return;
    io.to(room).emit('m', room, payload);
  });
});

let redisClients = [];

async function useRedis() {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pubClient = createClient({ url: REDIS_URL });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) {
    c.on('error', (e) => process.stderr.write(`socketio peer: redis: ${e.message}\n`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  redisClients = [pubClient, subClient];
  io.adapter(createAdapter(pubClient, subClient));
}

let closing = false;
function shutdown(signal) {
  if (closing) return;
  closing = true;
  process.stderr.write(`socketio peer: ${signal}, closing\n`);
  // Do not wait forever for clients that hold their sockets open.
  setTimeout(() => process.exit(0), 5000).unref();
  io.close(() => {
    Promise.allSettled(redisClients.map((c) => c.quit())).then(() => process.exit(0));
  });
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

async function main() {
  if (REDIS_URL) await useRedis();
  httpServer.on('error', (e) => fail(`listen on ${BIND}:${PORT}: ${e.message}`));
  httpServer.listen({ port: PORT, host: BIND, backlog: BACKLOG }, () => {
    const { port } = httpServer.address();
    process.stdout.write(`listening ${port}\n`);
  });
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
