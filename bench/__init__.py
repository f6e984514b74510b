"""Benchmarks (figures, never timed tests): ``bench/compass.py`` (``make bench``) is the one entry point.

bounds              the lower bound of a job's requests, and what a full run is (shared with the tests)
workbench           templates of generated data, a sandbox plus connector, connector runs counted
connector_figures   P1 full run, P2 initial coupling, P3 incremental run, P4 match-based coupling, P7 memory
services_figures    P5 the services' throughput and bulk writes
anchors             P5's anchors (bare Flask, json-server) and load generator (wrk, or a thread pool)
inprocess_figures   P6 in-process mode against live sockets
report              a figure, the table and the JSON
"""
