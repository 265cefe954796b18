"""gangrun's tests. A package, so pytest loads tests/conftest.py once, as tests.conftest, the name helpers use."""
