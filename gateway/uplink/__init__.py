"""The uplink process: local cloud-bound messages into the spool and out to the cloud, cloud messages
back to local targets, bulk topics to S3."""
