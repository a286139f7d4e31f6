-- netmon history, schema version 1. Times are Unix time in UTC: `ts` in nanoseconds,
-- `minute` and `hour` in seconds (the start of the bucket). Text columns that a
-- value may lack hold '' (aggregate keys) or NULL (raw events).

-- Process context, stored once per distinct (pid, comm, exe, cmdline, user).
CREATE TABLE processes (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    comm TEXT NOT NULL,
    exe TEXT NOT NULL DEFAULT '',
    cmdline TEXT NOT NULL DEFAULT '',
    uid INTEGER NOT NULL,
    user TEXT NOT NULL DEFAULT '',
    container TEXT NOT NULL DEFAULT '',
    UNIQUE (pid, comm, exe, cmdline, uid, user, container)
);

-- Raw events: connect, accept, udp, listen, close, flow, dns, alert and the scanner's
-- changes. `detail` is the event's JSON for what the columns do not hold.
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    type TEXT NOT NULL,
    process_id INTEGER REFERENCES processes (id),
    proto TEXT,
    direction TEXT,
    src_ip TEXT,
    src_port INTEGER,
    dst_ip TEXT,
    dst_port INTEGER,
    remote_name TEXT,
    bytes_sent INTEGER,
    bytes_received INTEGER,
    packets_sent INTEGER,
    packets_received INTEGER,
    duration_ms REAL,
    detail TEXT
);
CREATE INDEX events_ts ON events (ts);

-- What a flow aggregate is about. The ephemeral side's port is not kept (0): the
-- local port of an outbound flow, the remote port of an inbound one.
CREATE TABLE flow_keys (
    id INTEGER PRIMARY KEY,
    comm TEXT NOT NULL,
    exe TEXT NOT NULL,
    user TEXT NOT NULL,
    proto TEXT NOT NULL,
    direction TEXT NOT NULL,
    local_ip TEXT NOT NULL,
    local_port INTEGER NOT NULL,
    remote_ip TEXT NOT NULL,
    remote_port INTEGER NOT NULL,
    remote_name TEXT NOT NULL,
    UNIQUE (comm, exe, user, proto, direction, local_ip, local_port, remote_ip, remote_port, remote_name)
);

-- Per-minute and per-hour totals of a flow key: connections begun, payload bytes and
-- packets each way (sent = from this host).
CREATE TABLE flow_minute (
    minute INTEGER NOT NULL,
    key_id INTEGER NOT NULL REFERENCES flow_keys (id),
    connections INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    packets_sent INTEGER NOT NULL DEFAULT 0,
    packets_received INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, key_id)
) WITHOUT ROWID;

CREATE TABLE flow_hour (
    hour INTEGER NOT NULL,
    key_id INTEGER NOT NULL REFERENCES flow_keys (id),
    connections INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    packets_sent INTEGER NOT NULL DEFAULT 0,
    packets_received INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, key_id)
) WITHOUT ROWID;

-- Alerts, kept as long as the hourly aggregates. `detail` is the alert's JSON.
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    key TEXT NOT NULL,
    hits INTEGER NOT NULL,
    process_id INTEGER REFERENCES processes (id),
    detail TEXT NOT NULL
);
CREATE INDEX alerts_ts ON alerts (ts);

-- The scanner's inventory: every host and port it found (kept, marked down/closed).
CREATE TABLE hosts (
    ip TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    mac TEXT,
    name TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER,
    last_change INTEGER NOT NULL
);

CREATE TABLE ports (
    ip TEXT NOT NULL,
    proto TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    service TEXT,
    version TEXT,
    first_seen INTEGER NOT NULL,
    last_change INTEGER NOT NULL,
    PRIMARY KEY (ip, proto, port)
);

-- Facts about the store itself (`hosts_json_imported`, …).
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Readable joins for the sqlite3 command-line tool.
CREATE VIEW flows_by_minute AS
SELECT m.minute, k.comm, k.exe, k.user, k.proto, k.direction, k.local_ip, k.local_port,
       k.remote_ip, k.remote_port, k.remote_name, m.connections, m.bytes_sent,
       m.bytes_received, m.packets_sent, m.packets_received
FROM flow_minute m JOIN flow_keys k ON k.id = m.key_id;

CREATE VIEW flows_by_hour AS
SELECT h.hour, k.comm, k.exe, k.user, k.proto, k.direction, k.local_ip, k.local_port,
       k.remote_ip, k.remote_port, k.remote_name, h.connections, h.bytes_sent,
       h.bytes_received, h.packets_sent, h.packets_received
FROM flow_hour h JOIN flow_keys k ON k.id = h.key_id;

CREATE VIEW events_with_process AS
SELECT e.*, p.pid, p.comm, p.exe, p.cmdline, p.uid, p.user, p.container
FROM events e LEFT JOIN processes p ON p.id = e.process_id;
