"""What the tests and the benchmarks share: real servers on free ports, the sample archives, tiny
models of each family, a gateway in a thread and the whole local stack."""
