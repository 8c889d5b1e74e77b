"""The contracts every part shares import nothing but pydantic and the standard library, so that
any part (the terminal client included) can read them without the services behind them."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import shared.contracts

ROOT = Path(__file__).resolve().parent.parent
PYDANTIC = {
    "pydantic",
    "pydantic_core",
    "typing_extensions",
    "annotated_types",
    "typing_inspection",
}


def loaded_after(*imports: str) -> set[str]:
    """The modules a fresh interpreter holds after these imports."""
    statements = [f"import {module}" for module in imports]
    program = "; ".join(["import json, sys", *statements, "print(json.dumps(sorted(sys.modules)))"])
    found = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(json.loads(found.stdout))


def test_the_contracts_import_only_pydantic_and_the_standard_library() -> None:
    modules = [
        f"shared.contracts.{info.name}" for info in pkgutil.iter_modules(shared.contracts.__path__)
    ]
    assert {"shared.contracts.jobs", "shared.contracts.stages"} <= set(modules)
    loaded = loaded_after(*modules) - loaded_after()
    # sysconfig's data module is the standard library's too, named for the platform.
    tops = {name.split(".")[0] for name in loaded if not name.startswith("_sysconfigdata_")}
    assert tops - set(sys.stdlib_module_names) - PYDANTIC - {"shared"} == set()
    project = {name for name in loaded if name.split(".")[0] == "shared"}
    assert project == {"shared", "shared.contracts", *modules}
