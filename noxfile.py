"""Nox sessions: ``nox -s tests`` and ``nox -s lint``.

Each session installs torch==2.13.0 before the project: on this project's machines any other
torch request downloads gigabytes of CUDA packages.
"""

import nox

nox.options.sessions = ["lint", "tests"]
TORCH = "torch==2.13.0"


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the test suite."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "src", "tests", "benchmarks")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks")
