"""The local device shadow service: AWS IoT's shadow semantics on the local broker, persisted in
SQLite, optionally mirrored to the cloud through the uplink."""
