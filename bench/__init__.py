"""The benchmark harness: `make bench` starts the stack on embedded infrastructure, drives it with
a fast multi-process load generator, measures the gateway against a lean reference server on the
same workload, and writes JSON, a Markdown report and plots under `bench/results/`.
"""
