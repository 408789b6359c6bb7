"""`sam` installs on its own: the distribution is the optimizer library and torch is its only requirement.

A user who already has a torch (a CUDA machine's build, say) runs `pip install .` of a clone, or
`pip install "git+<repo-url>"`, and gets `sam` and nothing else: no exact torch pin that would replace their build, no
experiment stack, no top-level packages named `experiments` or `analysis`. The slow test does exactly that in a fresh
venv whose site-packages holds only torch, the packages torch requires, pip and setuptools (symlinked from this .venv,
nothing copied), with `--no-index`: pip cannot fetch anything, so the install succeeds only if every requirement of
the distribution is already met by torch and its own requirements.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_distribution_is_sam_with_torch_as_a_lower_bound():
    project = PYPROJECT["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    assert [r.name for r in requirements] == ["torch"], "the library requires torch and nothing else"
    (torch,) = requirements
    # a range the user's torch satisfies, never `==`/`~=`/`<`, which would make pip replace it
    assert {s.operator for s in torch.specifier} == {">="}, f"torch requirement {torch} must be a lower bound only"
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["sam", "sam.*"]
    # sam.hf imports transformers: an extra, not a requirement of `import sam`
    assert [Requirement(r).name for r in project["optional-dependencies"]["hf"]] == ["transformers"]


def test_make_setup_still_installs_the_lock_and_the_clone_for_development():
    """The experiment stack's environment is requirements.lock (exact pins) + this project editable + the clone's
    root on sys.path (experiments/ and analysis/ import from any working directory, as they did when they were
    packaged)."""
    recipe = (REPO / "Makefile").read_text(encoding="utf-8").split("$(STAMP): requirements.lock pyproject.toml\n")[1]
    recipe = recipe.split("\n\n")[0]
    assert "pip install -q -r requirements.lock" in recipe
    assert "pip install -q --no-deps --no-build-isolation -e ." in recipe
    assert "sam-accum-repo.pth" in recipe and "$(CURDIR)" in recipe
    assert re.search(r"^torch==\d", (REPO / "requirements.lock").read_text(encoding="utf-8"), re.M)


def _requirement_closure(name: str) -> list[metadata.Distribution]:
    """`name`'s distribution and every one its requirements need in this interpreter (markers evaluated here)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _link_into(site: Path, dist: metadata.Distribution) -> None:
    """Symlink the top-level files and folders `dist` installed into `site` (nothing is copied)."""
    source = Path(dist.locate_file(""))
    tops = {Path(f).parts[0] for f in dist.files or []}
    for top in sorted(tops):
        if top in ("..", "__pycache__") or top.endswith(".pth"):  # scripts in bin/, byte code, start-up hooks
            continue
        if (source / top).exists() and not (site / top).exists():
            (site / top).symlink_to(source / top)


def _git_status() -> str:
    done = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


# What the venv's interpreter sees, run from outside the clone (cwd = tmp_path).
PROBE = """
import importlib.util, json
from importlib import metadata
import torch
found = {name: importlib.util.find_spec(name) is not None for name in ("sam", "experiments", "analysis")}
seen = {"torch": [torch.__version__, torch.__file__], "found": found}
if found["sam"]:
    import sam
    seen.update(
        sam=sam.__file__,
        api=[callable(getattr(sam, "SAM", None)), callable(getattr(sam, "train_step", None))],
        dists=sorted(d.metadata["Name"] for d in metadata.distributions()),
        sam_files=sorted({str(f).split("/")[0] for f in metadata.distribution("sam-accum").files}),
    )
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_pip_install_of_the_clone_adds_sam_alone_next_to_an_existing_torch(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    assert site.is_relative_to(env_dir) and site != Path(sysconfig.get_path("purelib"))
    # torch as the user has it (with what it requires), plus the installer and the build backend
    provided = _requirement_closure("torch") + [metadata.distribution("pip"), metadata.distribution("setuptools")]
    for dist in provided:
        _link_into(site, dist)

    # outside the clone, so the working directory cannot put experiments/ or analysis/ on sys.path
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    clean_env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    def probe() -> dict:
        done = subprocess.run(
            [python, "-c", PROBE], cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    status_before = _git_status()
    before = probe()
    assert before["found"] == {"sam": False, "experiments": False, "analysis": False}, "the venv is not fresh"

    # no --no-deps: with --no-index pip succeeds only when everything the distribution requires is already here
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-cache-dir", str(REPO)],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    assert "Successfully installed sam-accum-0.1.0" in install.stdout, install.stdout[-2000:]

    seen = probe()
    assert seen["torch"] == before["torch"], "installing sam changed the venv's torch"
    torch_home = Path(metadata.distribution("torch").locate_file("torch"))
    assert (site / "torch").is_symlink() and (site / "torch").resolve() == torch_home.resolve(), "torch was replaced"
    assert Path(seen["sam"]).is_relative_to(site), f"sam imported from {seen['sam']}, not the venv's site-packages"
    assert seen["api"] == [True, True]
    assert seen["found"] == {"sam": True, "experiments": False, "analysis": False}
    # the one new distribution is sam-accum, and it installed the sam package and its metadata only
    assert sorted(set(seen["dists"]) - {d.metadata["Name"] for d in provided}) == ["sam-accum"]
    assert seen["sam_files"] == ["sam", "sam_accum-0.1.0.dist-info"], (
        "the wheel holds more than sam: setuptools also packs what an older install left in build/lib (`make clean`)"
    )
    # the in-tree build (build/, *.egg-info) is ignored: later runs do not record the clone as dirty
    assert _git_status() == status_before
