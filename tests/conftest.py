"""Shared test set-up: each fixture module builds one real world (S3 server, vcsim, Ray)."""

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.vcsim",
    "tests.fixtures.ray",
]
