"""prefmill's data layer: the versioned Delta Lake store, table schemas, row keys, lineage,
quarantine and the stages that read pinned table versions and commit batches."""
