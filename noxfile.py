"""Developer tasks: `nox -s tests`, `nox -s demo`, `nox -s lint typecheck`, `nox -s bench`, `nox -s docs`,
`nox -s tests_minimal`, `nox -s tests_httpx2`."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_venv = "yes"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (sync, asyncio and trio), the examples, lint and types, with coverage."""
    session.install("-e", ".", "--group", "test", "--group", "lint", "--group", "typecheck")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    # coverage starts before pytest so the connectivity pytest plugin, imported at pytest start-up, is measured.
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report")


@nox.session
def tests_minimal(session: nox.Session) -> None:
    """The package installed without any extra: it imports, backend="auto" picks httpcore silently, and
    backend="aiohttp" fails with a clear error. Not a default session: it needs a venv of its own."""
    session.install(".", "pytest>=8.2", "anyio>=4.11")
    session.run("pytest", "-p", "no:cacheprovider", "tests/minimal", *session.posargs)


@nox.session
def tests_httpx2(session: nox.Session) -> None:
    """The package on httpx2 installed instead of httpx: the backend conformance suite, the socket streams and the
    stack on httpx2's clients. Not a default session: it needs a venv of its own."""
    session.install(".[demo]", "httpx2>=2.16", "pytest>=8.2", "anyio>=4.11", "trio>=0.25")
    if session.venv_backend == "uv":
        session.run_install("uv", "pip", "uninstall", "httpx", "httpcore")
    else:
        session.run_install("python", "-m", "pip", "uninstall", "--yes", "httpx", "httpcore")
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/on_httpx2",
        "tests/transports/test_backend_conformance.py",
        "tests/transports/test_core_calls.py",
        "tests/transports/test_sockets.py",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("--group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".", "--group", "typecheck")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """Run `connectivity demo`: three faulty replicas, bare httpx vs the connectivity stack."""
    session.install("-e", ".[demo]")
    session.run("connectivity", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: overhead over bare httpx and over peer libraries; JSON goes to bench/results/."""
    session.install("-e", ".", "--group", "bench")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def compare(session: nox.Session) -> None:
    """`connectivity compare`: in-process policies vs nginx / HAProxy / Caddy sidecars on loopback (the full run;
    `nox -s compare -- --quick` for a smoke run); JSON goes to bench/results/, the report and plots to
    bench/results/compare/ (`-- --report-dir docs/compare` refreshes the committed report)."""
    session.install("-e", ".[compare]")
    session.run("connectivity", "compare", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict."""
    session.install("-e", ".", "--group", "docs")
    session.run("mkdocs", "build", "--strict")
