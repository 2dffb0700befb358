"""The study's orchestration: its config, its stages, submitting and describing experiments, the
read layer the CLI and the API share, the report, the plots, and how work is named on the broker."""
