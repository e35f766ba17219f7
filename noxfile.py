"""Nox sessions: ``nox -s tests``, ``nox -s lint`` and ``nox -s mutation`` (not run by default).

Each session installs torch==2.13.0 before the project: on this project's machines any other
torch request downloads gigabytes of CUDA packages.
"""

import shutil
from pathlib import Path

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


# Mutation testing (``nox -s mutation [-- MODULE ...]``): the modules where one wrong line loses
# a user's data, each mutated alone against only the tests that exercise it (mutmut then runs,
# per mutant, the subset of those tests that reached the mutated function). Developers run it
# before a release; CI does not (it takes tens of minutes). Score and survivors: tests/README.md.
MUTMUT = "mutmut==3.8.1"
MUTATION_TESTS: dict[str, list[str]] = {
    "fsutil.py": ["tests/test_fsutil.py"],
    "store/registry.py": [
        "tests/store/test_registry_errors.py",
        "tests/store/test_registry.py",
        "tests/store/test_registry_concurrency.py",
    ],
    # In-process CLI tests first: mutmut maps a test to a function only from calls it sees in
    # the test process (a subprocess runs the mutant, but its calls are not traced).
    "store/commit.py": [
        "tests/store/test_commit.py",
        "tests/importing/test_importer.py",
        "tests/cli/test_models_cli.py",
        "tests/reliability/test_store_safety.py",
    ],
    # The in-process settle tests leave each instant a kill can leave (a journal, folders
    # moved) and settle it: faster than the kill tests, and seen by mutmut's mapping.
    "store/folder_change.py": [
        "tests/store/test_folder_change.py",
        "tests/store/test_commit.py",
    ],
    "store/blobs.py": [
        "tests/store/test_blobs.py",
        "tests/store/test_store_weights.py",
        "tests/store/test_commit.py",
        "tests/importing/test_undo.py",  # an import's undo of the cache: cache_idle
    ],
    "training/checkpointing.py": ["tests/training/test_checkpointing.py"],
    "checkpoints/manifest.py": ["tests/training/test_checkpointing.py"],
    # In-process: the kill and damage tests of whole runs (test_run_safety.py) train a model
    # for every mutant, which alone would take longer than the whole session should.
    "checkpoints/metadata.py": ["tests/training/test_checkpoint_metadata.py"],
    # The in-process staged imports first (seconds); the hub imports after them.
    "importing/undo.py": [
        "tests/importing/test_undo.py",
        "tests/reliability/test_import_integrity.py",
        "tests/reliability/test_import_safety.py",
    ],
    # In-process: configs and checkpoint folders built without training (test_resume.py),
    # and one tiny run trained per module and resumed (test_resume_trainer.py, seconds). The
    # CLI's whole runs (tests/reliability/test_run_safety.py) train a model per mutant: not
    # mapped (see tests/README.md).
    "training/resume.py": [
        "tests/training/test_resume.py",
        "tests/training/test_resume_trainer.py",
    ],
}


def _mutation_workdir(session: nox.Session, module: str) -> Path:
    """A fresh copy of the project for one module's run, with its mutmut config."""
    work = Path(session.create_tmp()) / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for folder in ("src", "tests", "configs", "examples"):
        shutil.copytree(folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy("pyproject.toml", work / "pyproject.toml")
    tests = "\n    ".join(MUTATION_TESTS[module])
    (work / "setup.cfg").write_text(
        "[mutmut]\nsource_paths = src\n"
        f"only_mutate = src/llmforge/{module}\n"
        f"pytest_add_cli_args_test_selection =\n    {tests}\n"
        "pytest_add_cli_args = -p no:randomly -p no:cacheprovider\n"
    )
    return work


@nox.session(python="3.11")
def mutation(session: nox.Session) -> None:
    """Mutation-test the data-guarding modules (all, or those named after ``--``)."""
    if session.venv_backend != "none":  # ``nox --no-venv -s mutation``: use the current venv
        session.install(TORCH)
        session.install("-e", ".[test]", MUTMUT)
    modules = session.posargs or list(MUTATION_TESTS)
    for module in modules:
        work = _mutation_workdir(session, module)
        # Subprocesses the tests start (the CLI, killed at a file operation) import the mutated
        # copy too, and inherit MUTANT_UNDER_TEST from the environment.
        # One thread each: mutmut forks a child per mutant, and a forked torch whose parent
        # started a thread pool can hang (a mutant would then count as a timeout).
        env = {
            "PYTHONPATH": str(work / "mutants" / "src"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        with session.chdir(work):
            session.run("mutmut", "run", "--max-children", "2", env=env)
            session.run("mutmut", "results", "--all", "true", env=env)
