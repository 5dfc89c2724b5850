"""The `taskd` command and the operator's tools: run the bridge, workers and Flower (`up` on one
machine), and check, submit, show, retry, cap and count tasks. The daemon itself is `bridge/`."""
