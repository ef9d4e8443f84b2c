"""Local model folders: the embedded SmolLM2 default and tiny random models for tests/benchmarks."""
