//! The nats-server configuration a benchmark run starts its server with ([`server_config`]):
//! loopback listeners, WebSocket, and the routes of a cluster.

use std::fmt::Write as _;

/// A nats-server configuration for the benchmark: a client listener on `client_port` (used by
/// nothing but health checks), the WebSocket listener on `ws_port`, everything on loopback; with
/// `cluster`, this server's route port and the route ports of the other servers.
pub fn server_config(client_port: u16, ws_port: u16, cluster: Option<(u16, Vec<u16>)>) -> String {
    let mut c = String::with_capacity(2048);
    c.push_str(
        "# nats-server configuration written by bellhop-loadgen (systems::nats::server_config):\n\
         # the server set up at its best for the benchmark's workload (many WebSocket clients,\n\
         # small JSON messages, fast fan-out), on loopback only.\n\n",
    );
    let _ = writeln!(
        c,
        "# The plain TCP listener: the load generator does not use it, it is there because the\n\
         # server always has one; loopback only, like everything in the benchmark.\n\
         listen: \"127.0.0.1:{client_port}\"\n"
    );
    c.push_str(
        "# The largest payload a scenario sends is ~10 kB (Bellhop caps payload text at 10,000\n\
         # characters); 1 MB (the default) leaves room without letting one message hog a buffer.\n\
         max_payload: 1MB\n\n\
         # Outbound bytes buffered per connection before the server calls it a slow consumer and\n\
         # closes it. A broadcast to thousands of sockets queues bursts faster than a loaded 2-core\n\
         # machine drains them; 256 MB (default 64 MB) lets the burst drain instead of cutting\n\
         # clients, which is what Bellhop's bounded queues are measured against.\n\
         max_pending: 256MB\n\n\
         # How long a flush to one socket may block before that client is a slow consumer:\n\
         # 30 s (default 10 s), so a CPU-starved moment is not counted as a slow client.\n\
         write_deadline: \"30s\"\n\n\
         # Connections accepted (default 64K): never the limit of a run.\n\
         max_connections: 1000000\n\n\
         # Heartbeats at the defaults (ping_interval 2m, ping_max 2): the load generator answers\n\
         # every PING, and a shorter interval would only add traffic.\n\n\
         # Logging at the default level (no debug, no trace): tracing every message would measure\n\
         # the logger.\n\n",
    );
    let _ = writeln!(
        c,
        "websocket {{\n  \
         # The WebSocket listener the load generator connects to, loopback only.\n  \
         host: \"127.0.0.1\"\n  \
         port: {ws_port}\n  \
         # Plain ws://, like the Bellhop and Socket.IO runs (TLS would measure the cipher).\n  \
         no_tls: true\n  \
         # No permessage-deflate: small payloads, and deflate costs CPU per frame per client.\n  \
         compression: false\n  \
         # A connection storm on 2 cores can take longer than the 2 s default to upgrade.\n  \
         handshake_timeout: \"10s\"\n\
         }}"
    );
    if let Some((port, routes)) = cluster {
        c.push_str(
            "\n# Full mesh of routes between the benchmark's servers: a message published on one\n\
             # server reaches subscribers on the others (as Bellhop nodes share Redis).\n",
        );
        let _ = writeln!(
            c,
            "cluster {{\n  \
             name: \"bellhop-bench\"\n  \
             host: \"127.0.0.1\"\n  \
             port: {port}\n  \
             # Only the routes below: no gossiped URLs, the mesh is fixed and loopback only.\n  \
             no_advertise: true"
        );
        c.push_str("  routes: [\n");
        for route in routes {
            let _ = writeln!(c, "    \"nats-route://127.0.0.1:{route}\"");
        }
        c.push_str("  ]\n}\n");
    }
    c
}
