"""The `aeknn` command line: the third entry point, beside api/ and worker/."""
