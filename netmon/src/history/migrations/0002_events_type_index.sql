-- Version 2: `netmon history events --type T` over a long window reads only T's rows.
CREATE INDEX events_type_ts ON events (type, ts);
