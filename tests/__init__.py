"""pgbalancer's test suite (a package so that module names are unique for pytest and mypy)."""
