-- Version 4: connection events (connect, accept, udp, listen, close, flow) are kept
-- many to a row, in `event_batches`: one row per commit of the writer and minute,
-- holding a JSON array with one array per event: the columns of `events` by position
-- (ts, type, seq, process_id, proto, direction, src_ip, src_port, dst_ip, dst_port,
-- remote_name, bytes_sent, bytes_received, packets_sent, packets_received,
-- duration_ms, detail), null for what an event lacks. A row per event
-- (with its three indexes) cost the writer more than the rest of netmon per event on
-- a busy web server; a batch costs one JSON array per event. The other types (dns,
-- alert, exec, the scanner's changes) stay one row each in `event_rows`.
--
-- `events` is a view over both, with the columns `events` always had, so readers
-- (and the sqlite3 command-line tool) see one table. Its `batch_*` columns are the
-- bounds of an event's batch (an event's own `ts` and `seq` for one of
-- `event_rows`): a query that bounds them as well as `ts` or `seq` reads only the
-- batches in its window, through their indexes.
DROP VIEW events_with_process;
ALTER TABLE events RENAME TO event_rows;

CREATE TABLE event_batches (
    id INTEGER PRIMARY KEY,
    first_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    first_seq INTEGER,
    last_seq INTEGER,
    count INTEGER NOT NULL,
    events TEXT NOT NULL
);
CREATE INDEX event_batches_last_ts ON event_batches (last_ts);
CREATE INDEX event_batches_last_seq ON event_batches (last_seq) WHERE last_seq IS NOT NULL;

CREATE VIEW events AS
SELECT id, ts, type, process_id, proto, direction, src_ip, src_port, dst_ip, dst_port,
       remote_name, bytes_sent, bytes_received, packets_sent, packets_received,
       duration_ms, detail, seq,
       ts AS batch_first_ts, ts AS batch_last_ts, seq AS batch_first_seq,
       seq AS batch_last_seq
FROM event_rows
UNION ALL
SELECT -(b.id * 65536 + e.key) AS id,
       json_extract(e.value, '$[0]') AS ts,
       json_extract(e.value, '$[1]') AS type,
       json_extract(e.value, '$[3]') AS process_id,
       json_extract(e.value, '$[4]') AS proto,
       json_extract(e.value, '$[5]') AS direction,
       json_extract(e.value, '$[6]') AS src_ip,
       json_extract(e.value, '$[7]') AS src_port,
       json_extract(e.value, '$[8]') AS dst_ip,
       json_extract(e.value, '$[9]') AS dst_port,
       json_extract(e.value, '$[10]') AS remote_name,
       json_extract(e.value, '$[11]') AS bytes_sent,
       json_extract(e.value, '$[12]') AS bytes_received,
       json_extract(e.value, '$[13]') AS packets_sent,
       json_extract(e.value, '$[14]') AS packets_received,
       json_extract(e.value, '$[15]') AS duration_ms,
       json_extract(e.value, '$[16]') AS detail,
       json_extract(e.value, '$[2]') AS seq,
       b.first_ts AS batch_first_ts, b.last_ts AS batch_last_ts,
       b.first_seq AS batch_first_seq, b.last_seq AS batch_last_seq
FROM event_batches b, json_each(b.events) e;

-- An INSERT into `events` (by hand, or an older tool) becomes a row of `event_rows`.
CREATE TRIGGER events_insert INSTEAD OF INSERT ON events
BEGIN
    INSERT INTO event_rows (ts, type, process_id, proto, direction, src_ip, src_port,
        dst_ip, dst_port, remote_name, bytes_sent, bytes_received, packets_sent,
        packets_received, duration_ms, detail, seq)
    VALUES (NEW.ts, NEW.type, NEW.process_id, NEW.proto, NEW.direction, NEW.src_ip,
        NEW.src_port, NEW.dst_ip, NEW.dst_port, NEW.remote_name, NEW.bytes_sent,
        NEW.bytes_received, NEW.packets_sent, NEW.packets_received, NEW.duration_ms,
        NEW.detail, NEW.seq);
END;

CREATE VIEW events_with_process AS
SELECT e.*, p.pid, p.comm, p.exe, p.cmdline, p.uid, p.user, p.container
FROM events e LEFT JOIN processes p ON p.id = e.process_id;
