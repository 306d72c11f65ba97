"""The run configuration: RunConfig and its fields' metadata, built from defaults < YAML < flags."""
