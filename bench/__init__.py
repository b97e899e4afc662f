"""Benchmarks of gurukul-fast: load generator, baseline servers, micro-benchmarks, runner.

Nothing here is imported by the server or collected by the test suite (`testpaths` is
`tests`). Run it with `tox -e bench` or `python -m bench.run`; see bench/README.md.
"""
