"""One JSON Schema per task type (`<TYPE>.schema.json`), with the type's metadata in `x-taskd`."""
