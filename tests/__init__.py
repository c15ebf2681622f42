"""The test suite, a package so that its folders (tests/collector, tests/dashboard, ...) never
shadow the packages they test: pytest then puts the repository root, not tests/, on sys.path."""
