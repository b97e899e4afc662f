"""picows load generator for gurukul-fast and the baseline servers.

`python -m bench.loadgen SCENARIO --server KIND [options]` runs one scenario against one
freshly started server and prints its figures; `bench.run` runs them all side by side.
"""
